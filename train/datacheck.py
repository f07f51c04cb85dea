"""``tuneship data check FILE``: what training would see, without loading a model.

:func:`check_data` returns a :class:`DataCheck`; the CLI prints its :meth:`DataCheck.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.chat import resolve_chat_template
from tuneship.models import resolve_base
from tuneship.train.data import MAX_REPORTED, load_dataset
from tuneship.train.render import IGNORE, TokenStats, render, render_dataset, show_loss_tokens

TRAINED_STYLE = "green on grey15"


@dataclass
class DataCheck:
    """What ``tuneship train`` would see in a data file, with the same settings."""

    path: Path
    format: str
    rows: int  # rows read, valid or not
    problems: list[str]  # ``file:line: reason`` of every invalid row
    base: str  # the base model whose tokenizer and chat template rendered the rows
    max_length: int
    stats: TokenStats
    example_where: str  # ``file:line`` of the example shown
    example: list[tuple[str, bool]]  # its decoded pieces, True where they carry loss
    trained_in_example: int  # tokens of that example that carry loss

    def render(self) -> list[Any]:
        """The report as rich renderables (markup strings and a Text), one per line, to print in order."""
        from rich.markup import escape
        from rich.text import Text

        out: list[Any] = [
            f"[bold]{escape(str(self.path))}[/]: format [bold]{self.format}[/], {self.rows} rows, "
            f"{len(self.problems)} invalid"
        ]
        out += [f"  [red]{escape(problem)}[/]" for problem in self.problems[:MAX_REPORTED]]
        if len(self.problems) > MAX_REPORTED:
            out.append(f"  ... and {len(self.problems) - MAX_REPORTED} more")
        out.append(f"tokenizer and chat template of {escape(self.base)}")
        out += ["  " + escape(line) for line in self.stats.lines(self.max_length)]
        out.append(
            f"\nExample ({escape(self.example_where)}); [{TRAINED_STYLE}]«marked»[/] text carries loss:"
        )
        text = Text()
        for piece, trained in self.example:
            text.append(f"«{piece}»" if trained else piece, style=TRAINED_STYLE if trained else "dim")
        out.append(text)
        return out


def check_data(
    path: str | Path,
    fmt: str | None = None,
    base: str = "default",
    max_length: int = 512,
    loss_on: str = "assistant",
    chat_template: str | None = None,
) -> DataCheck:
    """Read and render every row as training would: format, problems, token statistics, and the
    first example with its loss tokens marked. Invalid rows are reported, not raised (DataError
    only when no row is usable).
    """
    from transformers import AutoTokenizer

    data = load_dataset(path, fmt, skip_invalid=True)
    model = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    template = resolve_chat_template(tokenizer, chat_template)
    n_rows = len(data.examples) + len(data.problems)
    _, stats = render_dataset(data, tokenizer, max_length, template, loss_on, skip_invalid=True)
    example = data.examples[0]
    ids, labels, _ = render(example.messages, tokenizer, template, loss_on)
    return DataCheck(
        path=data.path,
        format=data.format,
        rows=n_rows,
        problems=list(data.problems),
        base=model.name,
        max_length=max_length,
        stats=stats,
        example_where=example.where,
        example=show_loss_tokens(ids, labels, tokenizer),
        trained_in_example=sum(label != IGNORE for label in labels),
    )
