"""Evaluation settings: one pydantic model per group (flags, YAML and JSON requests come from it)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from tuneship.config import Settings, refuse

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"
# Retries of a request on 429, 5xx, timeouts and lost connections (with backoff): the one
# default for every client request (answers, judge, fidelity).
RETRIES = 5
# `tuneship ab --fail-if POLICY`: the primary-metric verdicts that fail an adapter (a CI gate).
FAIL_IF_POLICIES: dict[str, tuple[str, ...]] = {
    "worse": ("worse",),
    "not-better": ("worse", "inconclusive", "non-inferior"),
    "inconclusive": ("worse", "inconclusive"),
}


class Sampling(Settings):
    """Generation settings, identical for every arm of a comparison."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (0: greedy)")
    max_tokens: int = Field(128, ge=1, description="maximum tokens per answer")
    seed: int = Field(0, description="sampling seed sent with every request")

    def key(self) -> str:
        """These settings as one string: recorded answers are reused only under the same key."""
        return json.dumps(self.model_dump(), sort_keys=True)


class EvalSettings(Settings):
    """Settings of one evaluation or A/B comparison through an OpenAI-compatible API."""

    endpoint: str = Field(DEFAULT_ENDPOINT, description="OpenAI-compatible base URL")
    data: str = Field(
        description="evaluation items (messages or prompt, with references): JSONL, JSON, CSV, Parquet "
        "or a datasets directory"
    )
    out: str = Field("reports/eval", description="report directory")
    scorers: list[str] = Field(
        default_factory=list, description="scorer to apply (repeatable; default: chosen from the references)"
    )
    api_key: str | None = Field(None, description="API key for the endpoint")
    limit: int | None = Field(None, ge=1, description="only the first N items")
    concurrency: int = Field(
        16, ge=1, description="requests in flight, in all (an A/B's arms take turns in one pool)"
    )
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    retries: int = Field(RETRIES, ge=0, description="retries on 429/5xx/connection errors (with backoff)")
    sampling: Sampling = Field(default_factory=Sampling, description="generation settings of every arm")
    latency_requests: int = Field(
        32, ge=0, description="fresh streamed requests per model for latency (0: skip)"
    )
    margin: float | None = Field(
        None, ge=0, description="non-inferiority margin, in the primary metric's units"
    )
    noise_floor: Literal["auto", "on", "off"] = Field(
        "auto",
        description="A/B: add an A/A arm (the base again) to measure how far two runs of one model differ; "
        "auto: on unless the server reports deterministic inference",
    )
    judge_endpoint: str | None = Field(
        None, description="OpenAI-compatible URL of a pairwise judge model (optional)"
    )
    judge_model: str | None = Field(None, description="judge model name at judge_endpoint")
    judge_api_key: str | None = Field(None, description="judge endpoint's API key")

    @model_validator(mode="after")
    def _consistent(self) -> EvalSettings:
        problems = []
        if bool(self.judge_endpoint) != bool(self.judge_model):
            problems.append("judge_endpoint and judge_model: give both for a judge, or neither")
        refuse(problems)
        return self
