"""Tokenize rendered conversations and plain-text rows, and decide which tokens carry loss.

The template and the trained spans come from :mod:`tuneship.chat` (the one owner of the
chat template). Labels are built here, not from the pad token, so the end-of-turn token
is trained even when pad == eos. A plain-text row (:class:`TextExample`) is language
modelling: no template, every token trained, the end-of-sequence token appended so the
model learns where a text ends. A preference pair (:class:`PreferenceExample`) becomes the
prompt's ids and each answer's ids (:class:`RenderedPair`), cut where the trained span of
the conversation with that answer begins.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tuneship.chat import UnrenderedRow, trained_spans
from tuneship.errors import DataError
from tuneship.train.data import Dataset, Example, TextExample, raise_or_skip
from tuneship.train.preference import PreferenceExample

IGNORE = -100
LOSS_ON = ("assistant", "all")


@dataclass
class Rendered:
    where: str
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class RenderedPair:
    """A preference pair as token ids: the prompt, then each answer with its end of turn."""

    where: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def __len__(self) -> int:
        """Tokens of the longer of the two sequences (prompt + answer): what max_length bounds."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class TokenStats:
    examples: int
    min: int
    mean: float
    p50: int
    p90: int
    max: int
    too_long: int
    tokens: int
    trained_tokens: int

    def lines(self, max_length: int) -> list[str]:
        return [
            f"examples: {self.examples}",
            f"tokens per example: min {self.min}, mean {self.mean:.1f}, p50 {self.p50}, "
            f"p90 {self.p90}, max {self.max}",
            f"longer than max_length {max_length}: {self.too_long}",
            f"tokens: {self.tokens}, of which trained (carry loss): {self.trained_tokens} "
            f"({self.trained_tokens / max(1, self.tokens):.1%})",
        ]


def render(
    messages: list[dict],
    tokenizer: Any,
    chat_template: str | None = None,
    loss_on: str = "assistant",
    tools: list[dict] | None = None,
) -> tuple[list[int], list[int], str]:
    """Token ids and labels (IGNORE where no loss) for one conversation and the row's ``tools``.

    Raises UnrenderedRow when the template leaves out the row's tools or tool calls.
    """
    text, spans = trained_spans(messages, tokenizer, chat_template, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if loss_on == "all":
        return ids, list(ids), text
    labels = [IGNORE] * len(ids)
    for k, (start, end) in enumerate(encoded["offset_mapping"]):
        # A token that straddles the start of an answer (e.g. " a" after a template ending in a
        # space) is part of what the model must produce, so overlap is enough.
        if end > start and any(start < e and end > s for s, e in spans):
            labels[k] = ids[k]
    return ids, labels, text


def render_text(text: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and labels of a plain-text row: the tokenizer's own special tokens (a BOS where
    it adds one), the text, and the end-of-sequence token; every token carries loss.

    Raises DataError when the tokenizer has no end-of-sequence token.
    """
    if tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise DataError(f"{name}: no end-of-sequence token, so text rows cannot be told where to end")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids, list(ids)


def render_pair(example: PreferenceExample, tokenizer: Any, chat_template: str | None = None) -> RenderedPair:
    """The pair's prompt ids and answer ids, rendered as training renders a conversation.

    Each answer's ids are its trained span (the answer and its end of turn) in the rendered
    prompt + answer; the prompt is what precedes both (their common prefix, should a template
    render them differently). Raises UnrenderedRow as :func:`render` does.
    """
    sequences = []
    for answer in (example.chosen, example.rejected):
        ids, labels, _ = render(
            example.conversation(answer), tokenizer, chat_template, "assistant", example.tools
        )
        trained = [k for k, label in enumerate(labels) if label != IGNORE]
        sequences.append((ids, trained[0], trained[-1] + 1))
    (chosen, c_start, c_end), (rejected, r_start, r_end) = sequences
    shared = 0
    while shared < min(c_start, r_start) and chosen[shared] == rejected[shared]:
        shared += 1
    return RenderedPair(example.where, chosen[:shared], chosen[shared:c_end], rejected[shared:r_end])


def render_example(
    example: Example | TextExample | PreferenceExample,
    tokenizer: Any,
    chat_template: str | None = None,
    loss_on: str = "assistant",
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: a conversation through the chat template, a text
    row as language modelling (``loss_on`` does not apply: every token is trained), a preference
    pair as its prompt and chosen answer (the answer carries the loss)."""
    if isinstance(example, TextExample):
        return render_text(example.text, tokenizer)
    if isinstance(example, PreferenceExample):
        pair = render_pair(example, tokenizer, chat_template)
        return pair.prompt_ids + pair.chosen_ids, [IGNORE] * len(pair.prompt_ids) + pair.chosen_ids
    ids, labels, _ = render(example.messages, tokenizer, chat_template, loss_on, example.tools)
    return ids, labels


def render_examples(
    data: Dataset,
    tokenizer: Any,
    max_length: int,
    chat_template: str | None = None,
    loss_on: str = "assistant",
) -> tuple[list[Rendered | RenderedPair], TokenStats | None, list[str]]:
    """Render every example, refusing none: (those that fit, token statistics of all, the
    ``file:line: reason`` of those longer than ``max_length`` or with tools the chat template leaves
    out). Statistics are None when no example renders. A preference pair's length is its longer
    sequence (prompt + answer); both of its answers carry loss."""
    if loss_on not in LOSS_ON:
        raise DataError(f"loss_on must be one of {', '.join(LOSS_ON)}")
    rendered: list[Rendered | RenderedPair] = []
    problems, lengths = [], []
    trained = 0
    for example in data.examples:
        try:
            one = _render_one(example, tokenizer, chat_template, loss_on)
        except UnrenderedRow as e:  # tools the template leaves out: that row's problem
            problems.append(f"{example.where}: {e}")
            continue
        lengths.append(len(one))
        if len(one) > max_length:
            problems.append(f"{example.where}: {len(one)} tokens, longer than max_length {max_length}")
            continue
        if isinstance(one, RenderedPair):
            trained += len(one.chosen_ids) + len(one.rejected_ids)
        else:
            trained += sum(label != IGNORE for label in one.labels)
        rendered.append(one)
    return rendered, token_stats(lengths, max_length, trained) if lengths else None, problems


def _render_one(
    example: Example | TextExample | PreferenceExample,
    tokenizer: Any,
    chat_template: str | None,
    loss_on: str,
) -> Rendered | RenderedPair:
    if isinstance(example, PreferenceExample):
        return render_pair(example, tokenizer, chat_template)
    ids, labels = render_example(example, tokenizer, chat_template, loss_on)
    return Rendered(example.where, ids, labels)


def render_dataset(
    data: Dataset,
    tokenizer: Any,
    max_length: int,
    chat_template: str | None = None,
    loss_on: str = "assistant",
    skip_invalid: bool = False,
) -> tuple[list[Rendered | RenderedPair], TokenStats]:
    """Render every example; those longer than ``max_length`` are invalid rows too.

    Raises DataError naming them unless ``skip_invalid``, and when no example fits.
    """
    rendered, stats, problems = render_examples(data, tokenizer, max_length, chat_template, loss_on)
    raise_or_skip(data.path, problems, skip_invalid)
    data.problems.extend(problems)
    if not rendered or stats is None:
        too_long = f"longer than max_length {max_length}"
        if all(too_long in problem for problem in problems):
            raise DataError(f"{data.path}: no example fits in max_length {max_length}")
        raise DataError(f"{data.path}: no example can be trained (the first refused: {problems[0]})")
    return rendered, stats


def token_stats(lengths: list[int], max_length: int, trained: int) -> TokenStats:
    ordered = sorted(lengths)
    return TokenStats(
        examples=len(ordered),
        min=ordered[0],
        mean=statistics.fmean(ordered),
        p50=ordered[len(ordered) // 2],
        p90=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        max=ordered[-1],
        too_long=sum(n > max_length for n in ordered),
        tokens=sum(ordered),
        trained_tokens=trained,
    )


def show_loss_tokens(ids: list[int], labels: list[int], tokenizer: Any) -> list[tuple[str, bool]]:
    """Decoded pieces of one example, each marked True when it carries loss."""
    pieces: list[tuple[str, bool]] = []
    for token, label in zip(ids, labels, strict=True):
        piece, trained = tokenizer.decode([token]), label != IGNORE
        if pieces and pieces[-1][1] == trained:
            pieces[-1] = (pieces[-1][0] + piece, trained)
        else:
            pieces.append((piece, trained))
    return pieces
