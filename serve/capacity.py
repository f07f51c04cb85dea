"""What one vLLM server holds: the model's context (``--max-model-len``) and LoRA slots (``--max-loras``).

The context is read from the model directory's ``config.json`` (no weights loaded) the way vLLM
derives it, so a request for more than the model has is refused in one line before vLLM starts,
instead of ending in vLLM's traceback. By default tuneship asks vLLM for the model's own context,
reduced to what the KV cache holds (``--max-model-len auto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.artifacts import read_json
from tuneship.errors import TuneshipError

# The keys vLLM 0.32 reads a model's context from (the smallest wins; ``model_max_length``
# overrides them): vllm/transformers_utils/model_arch_config_convertor.py.
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# RoPE types whose max_position_embeddings already includes their scaling factor (vllm/config/model.py).
SCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
# What vLLM's --max-model-len takes for "the model's context, fitted to the KV cache".
AUTO_MAX_MODEL_LEN = "auto"


@dataclass(frozen=True)
class Context:
    """A model's context length and where it was read."""

    tokens: int
    source: str  # e.g. "max_position_embeddings in DIR/config.json"


def model_context(model_dir: str | Path) -> Context | None:
    """The longest request (prompt + output) the model at ``model_dir`` supports, from its config.json.

    None when config.json is missing or names no context length (vLLM then decides).
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config: dict[str, Any] = read_json(path)
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    found = [(text[key], key) for key in CONTEXT_KEYS if _positive(text.get(key))]
    if _positive(text.get("model_max_length")):
        found = [(text["model_max_length"], "model_max_length")]
    if not found:
        return None
    tokens, key = min(found)
    factor = 1.0 if "gemma3" in str(text.get("model_type", "")) else _rope_factor(text)
    scaled = f" x RoPE factor {factor:g}" if factor != 1.0 else ""
    return Context(int(tokens * factor), f"{key}{scaled} in {path}")


def check_max_model_len(requested: int, context: Context | None) -> None:
    """Refuse an explicit ``--max-model-len`` beyond the model's context (0: the model's own; fine).

    Raises TuneshipError naming the model's limit, before vLLM is started.
    """
    if requested and context and requested > context.tokens:
        raise TuneshipError(
            f"--max-model-len {requested} is more than the model's context of {context.tokens} tokens "
            f"({context.source}); leave it out to use the model's context"
        )


def context_note(requested: int, context: Context | None, served: int | None = None) -> str:
    """The start-up summary's line on the longest request; ``served``: what vLLM reports it uses."""
    if requested:
        return f"Max model len: {requested} tokens per request (prompt + output; --max-model-len)"
    if context is None:
        size = f"{served} tokens" if served else "vLLM's choice"
        return f"Max model len: {size} per request (the model's config names no context length)"
    if served and served < context.tokens:
        return (
            f"Max model len: {served} tokens per request: the model's context of {context.tokens} "
            "reduced to fit the KV cache (raise --kv-cache-gb or --gpu-memory-utilization for more)"
        )
    return f"Max model len: {context.tokens} tokens per request, the model's context ({context.source})"


def lora_slots(max_loras: int, adapters: int) -> int:
    """Adapters vLLM holds at once: the configured number, else one per adapter (at least 1)."""
    return max_loras or max(1, adapters)


def slots_note(max_loras: int, adapters: int, hot_loading: bool) -> str | None:
    """A line when adapters outnumber the server's LoRA slots, so requests wait while vLLM swaps them."""
    slots = lora_slots(max_loras, adapters)
    if adapters > slots:
        return (
            f"LoRA slots: {slots} for {adapters} adapters (--max-loras): a request for an adapter "
            f"that is not in a slot waits while vLLM swaps it in; --max-loras {adapters} holds them all"
        )
    if hot_loading:
        return (
            f"LoRA slots: {slots} (--max-loras); adapters hot-loaded beyond that are swapped in "
            "as requests need them, and those requests wait"
        )
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _rope_factor(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if not isinstance(rope, dict):
        return 1.0
    # transformers 5 may keep one set per layer type ({"full_attention": {...}, ...}).
    sets = list(rope.values()) if rope and all(isinstance(v, dict) for v in rope.values()) else [rope]
    factor = 1.0
    for parameters in sets:
        kind = parameters.get("rope_type") or parameters.get("type") or "default"
        if kind not in SCALED_ROPE and _positive(parameters.get("factor")):
            factor = float(parameters["factor"])
    return factor
