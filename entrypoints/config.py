"""Settings of the front doors' own flows (the stages' settings live in their config modules)."""

from __future__ import annotations

from pydantic import Field

from tuneship.clients.config import DEFAULT_ENDPOINT
from tuneship.config import Settings

# Served bf16 (vLLM-CPU) against local fp32 PEFT, greedy, 48 tokens, default model on the
# ticket task: an adapter after 8 steps agreed on 7 of 8 held-out prompts (the miss: a
# near-tie "low"/"high" flip). Rounding noise flips such near-ties, so the bar sits below
# 100%, yet far above what a wrong template or an unapplied adapter gives (0-20% here).
MIN_AGREEMENT = 0.75


class FidelitySettings(Settings):
    """Settings of one fidelity check: which run, which served model, how many samples."""

    run: str = Field(description="the training run directory")
    model: str = Field(description="served name of the adapter (or merged model) to check")
    endpoint: str = Field(DEFAULT_ENDPOINT, description="OpenAI-compatible base URL")
    base_model: str | None = Field(
        None, description="served name of the base model (default: the model's parent)"
    )
    api_key: str | None = Field(None, description="the server's API key")
    samples: int = Field(16, ge=1, description="conversations per check")
    max_tokens: int = Field(64, ge=1, description="greedy tokens per answer")
    min_agreement: float = Field(MIN_AGREEMENT, ge=0, le=1, description="share of answers that must match")
    out: str | None = Field(None, description="where fidelity.json/.md go (default: RUN/fidelity)")
    seed: int = Field(0, description="seed that picks the sampled conversations")
