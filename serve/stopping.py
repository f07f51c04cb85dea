"""Where served models stop: at the chat template's end of turn, even when the base does not end
sequences with it.

vLLM stops a request at the tokenizer's eos and at the ``eos_token_id`` of the generation config
it reads once per server (``--generation-config``: ``auto`` is the model's own
``generation_config.json``); ``--override-generation-config`` sets sampling defaults only, not
stop ids (vllm/config/model.py, ``get_diff_sampling_param``). Every model on a server, LoRA
adapters included, stops on the same ids. So when the template's end-of-turn token is not among
the base's end-of-sequence ids, tuneship writes the base's generation config with that token
added and passes its directory as ``--generation-config``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tuneship.artifacts import sha256_text
from tuneship.chat import end_of_sequence_ids, stop_token_ids
from tuneship.models import cache_home

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopPlan:
    """The ids every model on one server stops on, and how vLLM is told."""

    ids: list[int]
    generation_config: Path | None = None  # pass as --generation-config; None: the model's own
    note: str | None = None  # for the start-up summary

    @property
    def vllm_value(self) -> str:
        """What vLLM's ``--generation-config`` gets."""
        return str(self.generation_config) if self.generation_config else "auto"


def plan_stopping(model_dir: Path, chat_template: str | None, base_name: str) -> StopPlan:
    """What the server must stop on for ``chat_template`` (the one it applies) on the model at ``model_dir``.

    Writes a generation config (under ``$TUNESHIP_HOME/generation/``, named by its content) only
    when the template's end of turn is missing from the model's end-of-sequence ids.
    """
    if not chat_template:
        return StopPlan([])
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = end_of_sequence_ids(tokenizer, model_dir)
    ids = stop_token_ids(tokenizer, model_dir, chat_template)
    added = [i for i in ids if i not in eos]
    if not added:
        return StopPlan(ids)
    own = model_dir / "generation_config.json"
    generation = GenerationConfig.from_pretrained(model_dir) if own.is_file() else GenerationConfig()
    generation.eos_token_id = ids
    text = json.dumps(generation.to_dict(), indent=2, sort_keys=True) + "\n"
    directory = cache_home() / "generation" / sha256_text(text)[:16]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(text)
    for path in (directory.parent, directory, directory / "generation_config.json"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the serving image runs unprivileged
    tokens = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} (id {i})" for i in added)
    note = (
        f"Stopping: the chat template ends a turn with {tokens}, which {base_name} does not end "
        f"sequences with; every model on this server stops on ids {ids} (--generation-config {directory})"
    )
    log.debug(note)  # the start-up summary shows it (VLLMServer.notes)
    return StopPlan(ids, directory, note)
