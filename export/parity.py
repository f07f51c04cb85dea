"""Proof that a merged export computes what base + adapter computes: ``parity.json``.

The merged weights, rounded to the saved dtype, are run on a fixed chat conversation next to PEFT's
base + adapter in fp32 (what a float32 reload of the file computes; :func:`check_saved_tensors`
then proves the file holds exactly those weights); the worst logit difference and the share
of positions with the same greedy token must stay within the saved dtype's tolerance.
``parity.json`` is ``model_dump_json()`` of :class:`Parity`; its JSON Schema is published in
``export/schemas/parity.schema.json`` and a test keeps the two equal. Regenerate the schema
after a change with::

    python -m tuneship.export.parity
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tuneship.artifacts import PARITY, read_json
from tuneship.errors import ArtifactError

Dtype = Literal["bf16", "fp16", "fp32"]
SCHEMA = Path(__file__).parent / "schemas" / "parity.schema.json"
# Worst-case |logit difference| accepted between the saved merged model and PEFT's
# base + adapter in fp32. Measured on the default 135M model and PARITY_CONVERSATION: rounding
# the merged weights to bf16 moves its logits by 0.50 (a trained invoice adapter) to 0.75 (a random
# rank-16 adapter, alpha 32, far larger than trained ones); merges made wrong on purpose, trained
# adapter: scaling 10% high 1.13, the last layer unmerged 1.64, the first 3.54, doubled 14.1,
# none 14.3 (the random adapter: 4.9 to 42.8). One module of 210 left unmerged stays within it.
TOLERANCE: dict[str, float] = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.5}
MIN_AGREEMENT: dict[str, float] = {"fp32": 1.0, "bf16": 0.9, "fp16": 0.95}
# The merged export's check: one conversation, every position of it compared. Assistant turns are
# where a fine-tune acts: on the default model and a trained invoice adapter its positions moved by
# a median 4.6 logits (max |diff| per position) against 3.9 on the 8 user prompts of
# export/gguf_parity.py rendered alone, with 136 positions against 138 in one pass instead of a
# shared turn and a padded batch (0.28 s against 0.41 s per model on 2 CPU threads).
PARITY_CONVERSATION = [
    {"role": "user", "content": "The capital of France is"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "My order has not arrived and I am upset."},
    {
        "role": "assistant",
        "content": "I am sorry to hear that. Could you share your order number so I can check?",
    },
    {"role": "user", "content": "def fibonacci(n):"},
    {"role": "assistant", "content": "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)"},
    {"role": "user", "content": "Translate to German: good morning"},
]


class Parity(BaseModel):
    """Merged model against PEFT's base + adapter on :data:`PARITY_CONVERSATION` (``parity.json``)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    prompts: int
    """User turns of the chat-rendered conversation compared."""
    positions: int
    """Token positions compared: every token of the rendered conversation."""
    max_abs_logit_diff: float
    """Largest |logit difference| at any position and vocabulary entry (fp32 logits)."""
    greedy_agreement: float
    """Share of positions (0-1) where both pick the same most likely next token."""
    dtype: Dtype
    """dtype of the saved merged weights."""
    tolerance: float
    """Largest ``max_abs_logit_diff`` accepted for this dtype."""
    min_agreement: float
    """Smallest ``greedy_agreement`` accepted for this dtype."""
    passed: bool
    """Both limits held."""

    def summary(self) -> str:
        """One line for people: the numbers that decide."""
        return (
            f"max |logit diff| {self.max_abs_logit_diff:.4f}, greedy agreement "
            f"{self.greedy_agreement:.1%} over {self.positions} positions"
        )


def conversation_logits(model: Any, tokenizer: Any) -> Any:
    """Logits (fp32, no grad) at every position of :data:`PARITY_CONVERSATION` rendered with the
    tokenizer's chat template, ending in the generation prompt: a (tokens, vocab) tensor from one
    forward pass."""
    import torch

    ids = tokenizer.apply_chat_template(PARITY_CONVERSATION, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def compare_logits(reference: Any, candidate: Any, dtype: Dtype) -> Parity:
    """Compare two models' :func:`conversation_logits` and judge them against ``dtype``'s limits."""
    max_diff = float((reference - candidate).abs().max())
    agree = (reference.argmax(-1) == candidate.argmax(-1)).float()
    max_diff, agreement = round(max_diff, 6), round(float(agree.mean()), 4)
    return Parity(
        prompts=sum(m["role"] == "user" for m in PARITY_CONVERSATION),
        positions=int(agree.numel()),
        max_abs_logit_diff=max_diff,
        greedy_agreement=agreement,
        dtype=dtype,
        tolerance=TOLERANCE[dtype],
        min_agreement=MIN_AGREEMENT[dtype],
        passed=max_diff <= TOLERANCE[dtype] and agreement >= MIN_AGREEMENT[dtype],
    )


def round_weights(model: Any, dtype: Any) -> dict[int, Any]:
    """Round every floating tensor the model saves (parameters, persistent buffers) to ``dtype``'s
    values in place, keeping their own dtype: the weights as a file in ``dtype`` holds them, as a
    float32 reload of it computes with them. Non-persistent buffers (rotary frequencies) stay as
    the model computed them, as a reload recomputes them.

    Returns the rounded tensors in ``dtype``, by the address of the tensor each rounds, for
    :func:`use_rounded` (converting the model again to save it took 0.2 s of the default model's
    export)."""
    import torch

    rounded: dict[int, Any] = {}
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.dtype != dtype and tensor.data_ptr() not in rounded:
                rounded[tensor.data_ptr()] = low = tensor.to(dtype)
                tensor.copy_(low)
    return rounded


def use_rounded(model: Any, rounded: dict[int, Any]) -> None:
    """Point the model's parameters and buffers at their copies from :func:`round_weights`: the
    same values, in the saved dtype (a tied weight is one parameter, pointed once)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in rounded:
            tensor.data = rounded[tensor.data_ptr()]


def check_saved_tensors(model: Any, directory: Path) -> None:
    """The ``*.safetensors`` in ``directory`` hold the model's tensors bit for bit (in the saved
    dtype), under the model's names, and nothing else; a tensor left out must be tied to a saved
    one (a tied output embedding). Raises ArtifactError naming the first difference.

    A model whose files use other names than its modules (transformers' conversion mappings,
    e.g. fused MoE experts) is reloaded with transformers and compared the same way instead.
    """
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    saved: set[str] = set()
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            names = list(f.keys())
            if not set(names) <= set(state):
                return _check_reloaded(state, directory)
            for name in names:
                tensor, checked = f.get_tensor(name), state[name]
                if tensor.dtype != checked.dtype or not torch.equal(tensor, checked):
                    raise ArtifactError(f"{file.name}: {name} is not the tensor the parity check ran with")
                saved.add(name)
    _check_left_out(state, saved)


def _check_left_out(state: dict[str, Any], saved: set[str]) -> None:
    kept = {state[name].data_ptr() for name in saved}
    left_out = [name for name, t in state.items() if name not in saved and t.data_ptr() not in kept]
    if left_out:
        raise ArtifactError(
            f"the saved files lack {len(left_out)} tensor(s) of the model (e.g. {left_out[0]})"
        )


def _check_reloaded(state: dict[str, Any], directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()
    for name, tensor in state.items():
        if name not in reloaded or not torch.equal(reloaded[name], tensor.float()):
            raise ArtifactError(f"{directory}: {name} reloads differently from the checked weights")


def read_parity(directory: Path | str) -> Parity:
    """The ``parity.json`` of an export; raises ArtifactError when it is missing or not valid."""
    path = Path(directory) / PARITY
    if not path.is_file():
        raise ArtifactError(f"{path}: no parity record; is this a merged tuneship export?")
    try:
        return Parity.model_validate(read_json(path))
    except ValueError as e:
        raise ArtifactError(f"{path}: not a valid parity record ({e})") from None


def json_schema() -> dict:
    """The published JSON Schema of ``parity.json``."""
    return Parity.model_json_schema(mode="serialization")


if __name__ == "__main__":
    SCHEMA.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA}")
