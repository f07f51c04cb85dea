"""The typed result of ``tuneship verify`` (``fidelity.json``): one record per check.

The checks themselves live in :mod:`tuneship.entrypoints.verify`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneship.determinism import ServerDeterminism

# Served stop rate may fall short of the reference's by this much before it is flagged.
STOP_TOLERANCE = 0.25
# Of the prompts where the adapter changes the reference's answer, at least this share
# must change the served answer too.
MIN_APPLIED = 0.5

Status = Literal["passed", "failed", "not checked"]


class _Record(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")


class TemplateMismatch(_Record):
    """One prompt the server renders differently from training."""

    prompt: str
    first_difference: int
    """Index of the first differing prompt token."""
    served: str
    """The served tokens from there (8, decoded)."""
    trained: str
    """The trained tokens from there (8, decoded)."""
    served_tokens: int
    trained_tokens: int


class TemplateCheck(_Record):
    """Served prompt token ids against the ids training rendered, token for token."""

    status: Status
    reason: str | None = None
    """Why the check did not run (``not checked``)."""
    prompts: int = 0
    mismatched: int = 0
    mismatches: list[TemplateMismatch] = Field(default_factory=list)
    """The first few mismatches."""


class StoppingCheck(_Record):
    """How often served greedy answers stop, against the local reference."""

    status: Status
    reason: str | None = None
    """Why it failed when the rates cannot be compared (a reference that never stops)."""
    served_stop_rate: float
    reference_stop_rate: float
    tolerance: float
    finish_reasons: dict[str, int]
    """Served ``finish_reason`` counts."""


class Disagreement(_Record):
    prompt: str
    served: str
    reference: str


class AgreementCheck(_Record):
    """Served greedy answers against the fp32 PEFT reference's."""

    status: Status
    rate: float
    agreed: int
    prompts: int
    min_agreement: float
    disagreements: list[Disagreement] = Field(default_factory=list)
    """The first few disagreements."""


class AppliedCheck(_Record):
    """Where the adapter changes the reference's answer, does it change the served answer too?"""

    status: Status
    reason: str | None = None
    """Why the check did not run (``not checked``)."""
    changed_by_adapter_locally: int = 0
    changed_when_served: int = 0
    share: float | None = None
    min_share: float = MIN_APPLIED


class FidelityChecks(_Record):
    template: TemplateCheck
    stopping: StoppingCheck
    agreement: AgreementCheck
    applied: AppliedCheck

    def statuses(self) -> dict[str, Status]:
        """{check name: status}, in check order."""
        return {name: check.status for name, check in self}


class FidelityResult(_Record):
    """``tuneship verify``: is what the server serves what the run trained?"""

    verdict: Literal["passed", "failed"]
    failed: list[str]
    """Checks that failed."""
    not_checked: list[str]
    """Checks the server could not support (never counted as passed)."""
    run: str
    endpoint: str
    model: str
    base_model: str | None
    """Served base model the applied check compared with (None: not checked)."""
    max_tokens: int
    checks: FidelityChecks
    determinism: ServerDeterminism | None = None
    """Whether the server had deterministic (batch-invariant) inference, as it reports it."""
    report: str | None = Field(default=None, exclude=True)
    """Path of fidelity.md (not saved in fidelity.json)."""
