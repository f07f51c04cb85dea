"""Serving settings: one pydantic model for one vLLM server (flags, YAML and JSON come from it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneship.adapters import VLLM_LORA_RANKS
from tuneship.config import Settings, refuse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeConfig(Settings):
    """Settings of one vLLM server."""

    base: str = Field(
        "default", description="base model: 'default', a model or export directory, or a hub id"
    )
    merged: str = Field(
        "", description="serve this merged export (tuneship export) instead of base + adapters"
    )
    served_name: str = Field(
        "", description="name the base model is served under (default: the model's name)"
    )
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapter to serve (repeatable)")
    registry: str = Field(
        "",
        description="adapter registry directory: serve each alias's version and the plain entries, "
        "answer a request for an alias with its version; with an API key, hot-load other versions",
    )
    max_lora_rank: int = Field(
        0, ge=0, description="largest adapter rank the server accepts (0: the smallest that fits)"
    )
    host: str = Field("127.0.0.1", description="interface to bind; anything beyond loopback needs an API key")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    api_key: str = Field("", description="API key clients must send (required when binding beyond loopback)")
    max_loras: int = Field(0, ge=0, description="adapters held at once (0: number of adapters, at least 1)")
    max_model_len: int = Field(
        0,
        ge=0,
        description="maximum tokens per request (prompt + output); 0: the model's context, "
        "fitted to the KV cache (more than the model's context is refused)",
    )
    kv_cache_gb: int = Field(2, ge=1, description="CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU only: fraction of GPU memory vLLM may use"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPU only: GPUs to shard the model over")
    log_file: str = Field("", description="server log file (default: logs/vllm-PORT.log)")
    extra_args: list[str] = Field(
        default_factory=list, description="extra flag passed to vLLM as is (repeatable)"
    )
    startup_timeout: float = Field(600.0, gt=0, description="seconds to wait for the server to become ready")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="weights and compute dtype; auto: vLLM's choice, except float32 on a CPU without "
        "bf16 instructions (AVX-512 BF16 or AMX), where bf16 is emulated and ~3x slower to serve",
    )
    eager: bool = Field(
        False,
        description="skip vLLM's torch.compile warm-up (--enforce-eager): starts sooner, decodes ~11% "
        "slower. On CPU only servers without LoRA compile, the first model of a shape for about a "
        "minute on 2 cores; later ones of that architecture load the saved compile",
    )
    deterministic: bool = Field(
        False,
        description="batch-invariant inference (VLLM_BATCH_INVARIANT): an answer does not depend on "
        "the batch it ran in; refused where vLLM has no such mode (CPU)",
    )

    @field_validator("adapters")
    @classmethod
    def _names(cls, adapters: dict[str, str]) -> dict[str, str]:
        bad = [name for name in adapters if not name or "/" in name or name.startswith(".")]
        if bad:
            raise ValueError(
                f"adapter name(s) {', '.join(map(repr, bad))}: use letters, digits, '-', '_', '.'"
            )
        return adapters

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, rank: int) -> int:
        if rank and rank not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM accepts one of {', '.join(map(str, VLLM_LORA_RANKS))}")
        return rank

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        problems = []
        if self.host not in LOOPBACK and not self.api_key:
            problems.append(f"host {self.host} is beyond loopback: set an API key (--api-key)")
        if self.merged and (self.adapters or self.registry):
            problems.append("--merged serves one merged model; it takes no adapters or registry")
        refuse(problems)
        return self

    @property
    def hot_loading(self) -> bool:
        """Runtime loading is on only with a registry to confine it and a key to guard it."""
        return bool(self.registry and self.api_key)
