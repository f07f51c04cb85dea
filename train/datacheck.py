"""``tuneship data check FILE``: what training would see, without loading a model."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from tuneship.chat import resolve_chat_template
from tuneship.models import resolve_base
from tuneship.train.data import load_dataset
from tuneship.train.render import IGNORE, render, render_dataset, show_loss_tokens


def check_data(
    path: str | Path,
    fmt: str | None = None,
    base: str = "default",
    max_length: int = 512,
    loss_on: str = "assistant",
    chat_template: str | None = None,
) -> dict:
    """Print format, problems, token statistics and one example with its loss tokens marked."""
    from transformers import AutoTokenizer

    console = Console(highlight=False)
    data = load_dataset(path, fmt, skip_invalid=True)
    model = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    template = resolve_chat_template(tokenizer, chat_template)
    n_rows = len(data.examples) + len(data.problems)
    _, stats = render_dataset(data, tokenizer, max_length, template, loss_on, skip_invalid=True)
    problems = data.problems
    console.print(
        f"[bold]{data.path}[/]: format [bold]{data.format}[/], {n_rows} rows, {len(problems)} invalid"
    )
    for problem in problems[:20]:
        console.print(f"  [red]{problem}[/]")
    if len(problems) > 20:
        console.print(f"  ... and {len(problems) - 20} more")
    console.print(f"tokenizer and chat template of {model.name}")
    for line in stats.lines(max_length):
        console.print("  " + line)
    example = data.examples[0]
    ids, labels, _ = render(example.messages, tokenizer, template, loss_on)
    console.print(f"\nExample ({example.where}); [green on grey15]«marked»[/] text carries loss:")
    text = Text()
    for piece, trained in show_loss_tokens(ids, labels, tokenizer):
        text.append(f"«{piece}»" if trained else piece, style="green on grey15" if trained else "dim")
    console.print(text)
    return {
        "format": data.format,
        "problems": problems,
        "stats": stats,
        "trained_in_example": sum(label != IGNORE for label in labels),
    }
