"""``tuneship data check``: what training would see, without loading a model; a gate for pipelines.

:func:`check_data` reads and renders the data with the settings ``tuneship train`` would use
(a :class:`TrainConfig`) and returns a :class:`DataCheck`: a typed result whose
:attr:`DataCheck.passed` says whether training would accept the data, whose JSON is the
command's ``--json`` output, and whose :meth:`DataCheck.render` is its report.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, computed_field

from tuneship.chat import end_of_turn_warning, resolve_chat_template
from tuneship.errors import DataError
from tuneship.models import resolve_base
from tuneship.train.config import TrainConfig
from tuneship.train.data import MAX_REPORTED, read_dataset
from tuneship.train.preference import PreferenceExample
from tuneship.train.render import (
    IGNORE,
    TokenStats,
    render_example,
    render_examples,
    render_pair,
    show_loss_tokens,
)

TRAINED_STYLE = "green on grey15"


class ShownExample(BaseModel):
    """One rendered example with the pieces that carry loss marked."""

    where: str = Field(description="file:line of the row")
    pieces: list[tuple[str, bool]] = Field(description="decoded text pieces, true where they carry loss")
    trained_tokens: int = Field(description="tokens of the example that carry loss")
    rejected: str | None = Field(None, description="a preference pair's rejected answer, as rendered")


class DataCheck(BaseModel):
    """What ``tuneship train`` would see in a data file, with the same settings."""

    path: str = Field(description="the data file or datasets directory")
    format: str | None = Field(description="the data format (None: no row fits one)")
    rows: int = Field(description="rows read, valid or not")
    examples: int = Field(description="valid examples that fit in max_length: what training would use")
    problems: list[str] = Field(description="file:line: reason of every invalid or too long row")
    skip_invalid: bool = Field(description="training drops invalid rows instead of refusing the data")
    base: str = Field(description="the base model whose tokenizer rendered the rows")
    chat_template: str | None = Field(
        description="the chat template that rendered the conversations: a file, or the base's own "
        "(None: text rows, rendered without one)"
    )
    max_length: int
    loss_on: str = Field(description="tokens that carry loss in conversations (text rows: every token)")
    stats: TokenStats | None = Field(description="token statistics of the valid rows (None: no valid row)")
    example: ShownExample | None = Field(description="the first example that fits, as rendered")
    warnings: list[str] = Field(
        default_factory=list, description="what training would warn about (an end of turn ending no sequence)"
    )

    @computed_field(description="training would accept this data (the command's exit status is 0)")
    @property
    def passed(self) -> bool:
        return self.examples > 0 and (not self.problems or self.skip_invalid)

    def render(self) -> list[Any]:
        """The report as rich renderables (markup strings and a Text), one per line, to print in order."""
        from rich.markup import escape

        out: list[Any] = [
            f"[bold]{escape(self.path)}[/]: format [bold]{self.format or 'unknown'}[/], {self.rows} rows, "
            f"{len(self.problems)} invalid",
            f"tokenizer of {escape(self.base)}; {escape(self._template())}",
        ]
        out += [f"[yellow]Warning:[/] {escape(warning)}" for warning in self.warnings]
        out += [f"  [red]{escape(problem)}[/]" for problem in self.problems[:MAX_REPORTED]]
        if len(self.problems) > MAX_REPORTED:
            out.append(f"  ... and {len(self.problems) - MAX_REPORTED} more")
        if self.stats is not None:
            out += ["  " + escape(line) for line in self.stats.lines(self.max_length)]
        if self.example is not None:
            out += self._render_example(self.example)
        out.append(self._verdict())
        return out

    def _template(self) -> str:
        if self.chat_template:
            return f"chat template: {self.chat_template}"
        return "no chat template (text rows: every token carries loss, end-of-sequence token appended)"

    def _render_example(self, example: ShownExample) -> list[Any]:
        from rich.markup import escape
        from rich.text import Text

        text = Text()
        for piece, trained in example.pieces:
            text.append(f"«{piece}»" if trained else piece, style=TRAINED_STYLE if trained else "dim")
        title = f"\nExample ({escape(example.where)}); [{TRAINED_STYLE}]«marked»[/] text carries loss:"
        if example.rejected is None:
            return [title, text]
        rejected = Text(f"«{example.rejected}»", style="red on grey15")
        return [
            title.replace("Example", "Example pair"),
            text,
            "Rejected answer (instead of the marked one):",
            rejected,
        ]

    def _verdict(self) -> str:
        invalid = len(self.problems)
        if not self.examples:
            return "[bold red]Refused:[/] no usable rows; training would stop here"
        if not invalid:
            return f"[bold green]Passed:[/] all {self.examples} examples are valid"
        if self.skip_invalid:
            dropped = f"{invalid} invalid row(s) would be dropped"
            return f"[bold yellow]Passed:[/] {dropped}; {self.examples} examples would train"
        return f"[bold red]Refused:[/] {invalid} invalid row(s); training would refuse this data"


def held_out_problems(config: TrainConfig, tokenizer: Any, template: str) -> list[str]:
    """The invalid rows of ``config.eval_data`` (none without one), which training refuses too.

    Raises DataError, as training does, when that file has no usable row.
    """
    if not config.eval_data:
        return []
    held_out = read_dataset(config.eval_data, config.format)
    rendered, _, problems = render_examples(held_out, tokenizer, config.max_length, template, config.loss_on)
    if not rendered:
        raise DataError(f"{held_out.path}: no usable rows in the held-out data", held_out.problems + problems)
    return held_out.problems + problems


def check_data(config: TrainConfig) -> DataCheck:
    """Read and render every row of ``config.data`` (and ``config.eval_data``) as
    ``train_model(config)`` would, refusing none.

    Invalid and too long rows are listed in the result, not raised. Raises DataError only for
    data that cannot be read at all, ModelError for a base or chat template that cannot be found.
    """
    from transformers import AutoTokenizer

    data = read_dataset(config.data, config.format)
    model = resolve_base(config.base)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    template = resolve_chat_template(tokenizer, config.chat_template or None)
    rendered, stats, too_long = render_examples(data, tokenizer, config.max_length, template, config.loss_on)
    too_long += held_out_problems(config, tokenizer, template)
    example = None
    if rendered:
        first = next(e for e in data.examples if e.where == rendered[0].where)
        ids, labels = render_example(first, tokenizer, template, config.loss_on)
        shown = show_loss_tokens(ids, labels, tokenizer)
        trained = sum(label != IGNORE for label in labels)
        rejected = None
        if isinstance(first, PreferenceExample):
            rejected = tokenizer.decode(render_pair(first, tokenizer, template).rejected_ids)
        example = ShownExample(where=first.where, pieces=shown, trained_tokens=trained, rejected=rejected)
    own = f"the tokenizer's own of {model.name}"
    chat = data.format != "text" and template
    turn = chat and end_of_turn_warning(tokenizer, model.path, template, model.name)
    return DataCheck(
        path=str(data.path),
        format=data.format,
        rows=data.rows,
        examples=len(rendered),
        problems=data.problems + too_long,
        skip_invalid=config.skip_invalid,
        base=model.name,
        chat_template=None if data.format == "text" else (config.chat_template or own),
        max_length=config.max_length,
        loss_on=config.loss_on,
        stats=stats,
        example=example,
        warnings=[turn] if turn else [],
    )
