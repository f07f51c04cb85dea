"""Pairwise LLM judge on a separate endpoint, asked in both answer orders.

For each item the judge sees the request and two answers, once with the adapter's
answer first and once with the base's first, and names the better one ("A" or "B", or
"TIE"). The adapter wins an item only when both orders prefer it, loses only when both
prefer the base; anything else (a tie, an unreadable reply, or a preference that follows
the position rather than the answer) is a tie. Position consistency — the share of items
where both orders agree — is reported: a judge that mostly picks a position is not
measuring quality. The share of single judgments that named the answer shown first is
reported too, and how the judge's picks track answer length (``clients/judge_bias.py``).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from tuneship.chat import text_of
from tuneship.clients.config import RETRIES
from tuneship.clients.data import EvalItem
from tuneship.clients.judge_bias import length_bias
from tuneship.clients.results import JudgeSummary
from tuneship.clients.runner import make_client
from tuneship.errors import EvalError

JUDGE_SYSTEM = (
    "You are an impartial judge. Compare two answers to the same request and decide which one "
    "answers it better (correct, complete, follows the instructions). Reply with exactly one "
    "word: A, B, or TIE."
)


def judge_prompt(item: EvalItem, first: str, second: str) -> list[dict]:
    request = "\n".join(f"{m['role']}: {text_of(m.get('content'))}" for m in item.messages)
    reference = f"\n\nA reference answer: {item.references[0]}" if item.references else ""
    answers = f"Answer A:\n{first}\n\nAnswer B:\n{second}"
    content = f"Request:\n{request}{reference}\n\n{answers}\n\nWhich is better?"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


def parse_choice(reply: str) -> str | None:
    """'A', 'B', 'TIE', or None when the reply names none of them first."""
    match = re.search(r"\b(A|B|TIE)\b", reply.strip().upper())
    return match.group(1) if match else None


def outcome(adapter_first: str | None, base_first: str | None) -> tuple[float, bool]:
    """(1 adapter wins / 0.5 tie / 0 base wins, whether both orders agree)."""
    adapter_votes = (adapter_first == "A") + (base_first == "B")
    base_votes = (adapter_first == "B") + (base_first == "A")
    consistent = (adapter_first, base_first) in (("A", "B"), ("B", "A"), ("TIE", "TIE"))
    if adapter_votes == 2:
        return 1.0, consistent
    if base_votes == 2:
        return 0.0, consistent
    return 0.5, consistent


@dataclass
class JudgeResult:
    model: str
    outcomes: dict[str, float]  # item id -> 1 / 0.5 / 0
    consistent: dict[str, bool]
    unparsed: int
    choices: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """item id -> the judge's reply with the adapter's answer first, and with the base's first."""
    lengths: dict[str, tuple[int, int]] = field(default_factory=dict)
    """item id -> (adapter answer, base answer) lengths in characters."""

    @property
    def position_consistency(self) -> float:
        return sum(self.consistent.values()) / max(1, len(self.consistent))

    @property
    def picked_first(self) -> float | None:
        """Share of single judgments naming A or B that named A, the answer shown first."""
        picks = [c for pair in self.choices.values() for c in pair if c in ("A", "B")]
        return sum(c == "A" for c in picks) / len(picks) if picks else None


def check_judge(endpoint: str, model: str, api_key: str | None = None) -> None:
    """Refuse, before any answer is generated, a judge that is unreachable or does not serve ``model``.

    A server without a model list (``GET /models`` answering an error) is given the benefit of the
    doubt: a wrong name then fails at the first judgment, in one line too.

    Raises:
        EvalError: the judge endpoint is unreachable, or lists its models and ``model`` is not one.
    """
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key=api_key or "EMPTY", timeout=10, max_retries=0)
    try:
        with client:
            served = [m.id for m in client.models.list().data]
    except openai.APIConnectionError:
        raise EvalError(f"cannot reach the judge at {endpoint} (is it running?)") from None
    except openai.APIStatusError:
        return
    if model not in served:
        raise EvalError(f"judge model {model!r} is not served at {endpoint} (served: {', '.join(served)})")


def judge_pairs(
    items: list[EvalItem],
    base_answers: dict[str, dict],
    adapter_answers: dict[str, dict],
    endpoint: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 8,
    timeout: float = 120,
    retries: int = RETRIES,
) -> JudgeResult:
    """Judge every item in both orders on ``endpoint`` (temperature 0; ``retries`` per request).

    Raises:
        EvalError: the judge became unreachable or refused a request (after retries).
    """
    import openai

    async def run() -> JudgeResult:
        semaphore = asyncio.Semaphore(concurrency)
        client = make_client(endpoint, api_key, timeout, retries)
        unparsed = 0

        async def ask(item: EvalItem, first: str, second: str) -> str | None:
            nonlocal unparsed
            async with semaphore:
                messages = judge_prompt(item, first, second)
                reply = await client.chat.completions.create(
                    model=model, messages=messages, temperature=0, max_tokens=4
                )
            choice = parse_choice(reply.choices[0].message.content or "")
            unparsed += choice is None
            return choice

        result = JudgeResult(model, {}, {}, 0)

        async def one(item: EvalItem) -> None:
            base, adapter = base_answers[item.id]["output"], adapter_answers[item.id]["output"]
            adapter_first, base_first = await asyncio.gather(
                ask(item, adapter, base), ask(item, base, adapter)
            )
            result.outcomes[item.id], result.consistent[item.id] = outcome(adapter_first, base_first)
            result.choices[item.id] = (adapter_first, base_first)
            result.lengths[item.id] = (len(adapter), len(base))

        async with client:
            await asyncio.gather(*(one(item) for item in items))
        result.unparsed = unparsed
        return result

    try:
        return asyncio.run(run())
    except openai.APIConnectionError:
        raise EvalError(f"lost the judge at {endpoint} (after {retries} retries)") from None
    except openai.APIStatusError as e:
        raise EvalError(f"judge {model} at {endpoint} answered {e.status_code}: {e.message}") from None


def judge_summary(result: JudgeResult, alpha: float = 0.05) -> JudgeSummary:
    """Wins, ties and losses of the adapter, how far the judge agreed with itself across answer
    orders, how often it named the answer shown first, and how its picks track answer length
    (``alpha``: the significance level of the length warning; see ``clients/judge_bias.py``)."""
    values = list(result.outcomes.values())
    picked_first = result.picked_first
    ids = [i for i in result.outcomes if i in result.lengths]
    length = None
    if ids:
        length = length_bias(
            [result.outcomes[i] for i in ids],
            [result.lengths[i][0] for i in ids],
            [result.lengths[i][1] for i in ids],
            alpha,
        )
    return JudgeSummary(
        judge_model=result.model,
        wins=sum(v == 1 for v in values),
        ties=sum(v == 0.5 for v in values),
        losses=sum(v == 0 for v in values),
        position_consistency=round(result.position_consistency, 4),
        unparsed_replies=result.unparsed,
        picked_first=None if picked_first is None else round(picked_first, 4),
        length=length,
    )
