"""Small helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "examples" / "tickets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


API_KEY = "test-key-123"


def make_adapter(
    base_path: Path, out: Path, rank: int = 8, seed: int = 0, base_sha256: str | None = None
) -> Path:
    """A real PEFT LoRA adapter with random non-zero weights, plus tuneship lineage naming its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneship.models import resolve_base

    out = Path(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    base = resolve_base(str(base_path))
    identity = {**base.identity(), "weights_sha256": base_sha256 or base.weights_sha256}
    lineage = {"kind": "adapter", "method": "lora", "base_model": identity}
    (out / "tuneship.json").write_text(json.dumps(lineage))
    return out
