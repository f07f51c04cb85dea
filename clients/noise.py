"""The noise floor of an A/B comparison: the base answering twice (an A/A check).

A batching server does not give one model's greedy answers as a function of the prompt alone
(see :mod:`tuneship.determinism`), so two runs of the same model can differ. The A/A arm is
the base again, with requests of its own and the same settings, in the same interleaved pool
as every other arm (:func:`tuneship.clients.runner.generate_arms`). It goes through the items
starting halfway (:func:`repeat_order`), so an item's two requests never ride in the same
batch; its answers go to a file of their own (``answers/BASE.aa.jsonl``).

From the two arms: how many answers differ, and per metric the paired difference with its
interval (``clients/stats.py``). The **floor** of a metric is the largest absolute bound of
that interval: a difference no larger than this also shows between two runs of one model, so
an adapter whose difference is within it is marked ``within_noise``.
"""

from __future__ import annotations

import logging

from tuneship.clients.results import Comparison, NoiseFloor
from tuneship.determinism import SERVER_PATH, ServerDeterminism

log = logging.getLogger(__name__)

REPEAT_SUFFIX = ".aa"
UNREPORTED = (
    "the server does not report it (not started by tuneship serve); "
    "two runs of one model may answer differently"
)


def repeat_label(base: str) -> str:
    """The A/A arm's label (and answer file stem): ``BASE.aa``."""
    return base + REPEAT_SUFFIX


def repeat_order(n: int) -> tuple[int, ...]:
    """Item order of the A/A arm: from the middle round to the start (0..n-1 rotated by n // 2).

    With the arms taking turns, an item's two requests are then about ``n / 2`` turns apart,
    never in the same batch unless ``n`` is tiny.
    """
    return tuple((k + n // 2) % n for k in range(n))


def server_determinism(endpoint: str, api_key: str | None = None) -> ServerDeterminism:
    """What the server at ``endpoint`` (``.../v1``) says about deterministic inference.

    ``GET /v1/tuneship/server`` on servers that ``tuneship serve`` started; any other server
    (or an error) gives ``deterministic=None`` with the reason.
    """
    import httpx

    url = endpoint.rstrip("/").removesuffix("/v1") + SERVER_PATH
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=10)
        if response.status_code == 200:
            return ServerDeterminism.model_validate(response.json())
    except (httpx.HTTPError, ValueError) as e:
        log.info("no determinism report from %s: %s", url, e)
    return ServerDeterminism(deterministic=None, detail=UNREPORTED)


def wants_repeat(setting: str, determinism: ServerDeterminism) -> bool:
    """Whether to add the A/A arm: ``on``, ``off``, or ``auto`` (on unless the server is deterministic).

    On a batch-invariant server two greedy runs answer alike by construction, so ``auto``
    spends no arm on it.
    """
    return setting == "on" or (setting == "auto" and not determinism.deterministic)


def floor_of(c: Comparison) -> float:
    """The noise floor of one A/A comparison: the largest absolute bound of its interval."""
    return max(abs(c.ci_low), abs(c.ci_high), abs(c.diff))


def noise_floor(
    arm: str,
    base_answers: dict[str, dict],
    repeat_answers: dict[str, dict],
    comparisons: list[Comparison],
    concurrency: int,
) -> NoiseFloor:
    """The A/A summary from the two arms' answers and their per-metric comparisons.

    Args:
        arm: the repeat arm's label.
        base_answers, repeat_answers: item id -> answer record (``output``), the same items.
        comparisons: the repeat against the base, one per metric (``clients/stats.compare``).
        concurrency: requests in flight in all, as the arms ran.
    """
    differ = sum(base_answers[i]["output"] != repeat_answers[i]["output"] for i in base_answers)
    n = len(base_answers)
    return NoiseFloor(
        arm=arm,
        items=n,
        answers_differ=differ,
        difference_rate=differ / n if n else 0.0,
        concurrency=concurrency,
        floor={c.metric: floor_of(c) for c in comparisons},
        comparisons=comparisons,
    )


def mark_within_noise(comparisons: dict[str, list[Comparison]], floor: dict[str, float]) -> None:
    """Set ``noise_floor`` and ``within_noise`` on every comparison of a metric the A/A measured."""
    for cs in comparisons.values():
        for c in cs:
            if c.metric in floor:
                c.noise_floor = floor[c.metric]
                c.within_noise = abs(c.diff) <= floor[c.metric]
