"""CPU LoRA ops alone: vLLM's stock CPU wrapper against tuneship's, per transformer layer.

    .venv/bin/python bench/lora_ops.py [--slots 4] [--rank 16] [--repeats 50]

On SmolLM2-135M's shapes (bf16): the four LoRA layers of one transformer layer (qkv with three
output slices, o, gate_up with two, down), applied with ``add_lora_linear`` as vLLM's LoRA
layers call it, for step shapes the server meets: 16 decode tokens of one adapter, 16 decode
tokens of four adapters in contiguous runs, the same interleaved (round-robin), and a 256-token
prefill of one adapter. Arms, in one run: ``stock`` (vLLM's ``PunicaWrapperCPU``),
``per-slice`` (tuneship's shrink and expand through vLLM's per-slice buffers, one product per
slice and adapter group: the path of contiguous steps before grouped_linear), ``torch-mm``
(today's wrapper with torch's matmul) and ``tuneship`` (today's wrapper: grouped_linear for
contiguous steps, dense_linear for interleaved ones or several adapters of few tokens each,
on vLLM-CPU's packed bf16 kernel where the CPU has AMX, see serve/lora_kernels.py).
Prints milliseconds per transformer layer (best of --repeats) and each arm's ratio to stock.
End-to-end serving figures are bench/serve_throughput.py's.
"""

from __future__ import annotations

import argparse
import time

import torch

LAYERS = {
    "qkv": (576, (576, 192, 192)),
    "o": (576, (576,)),
    "gate_up": (576, (1536, 1536)),
    "down": (1536, (576,)),
}
STEPS = {
    "decode, one adapter": [0] * 16,
    "decode, 4 adapters in runs": [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4,
    "decode, 4 adapters interleaved": [0, 1, 2, 3] * 4,
    "prefill 256, one adapter": [0] * 256,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    torch.manual_seed(0)
    weights = {
        name: (
            tuple(torch.randn(args.slots, 1, args.rank, width).to(torch.bfloat16) for _ in outs),
            tuple(torch.randn(args.slots, 1, out, args.rank).to(torch.bfloat16) for out in outs),
        )
        for name, (width, outs) in LAYERS.items()
    }
    print(f"{torch.get_num_threads()} threads; {args.slots} slots, rank {args.rank}, bf16; ms per layer")
    arms = ("stock", "per-slice", "torch-mm", "tuneship")
    print(
        f"{'step':32} "
        + " ".join(f"{a:>9}" for a in arms)
        + "   "
        + " ".join(f"{a + '/stock':>15}" for a in arms[1:])
    )
    for step, slots in STEPS.items():
        times = time_step(torch.tensor(slots), weights, args)
        print(
            f"{step:32} "
            + " ".join(f"{times[a]:9.2f}" for a in arms)
            + "   "
            + " ".join(f"{times[a] / times['stock']:15.2f}" for a in arms[1:])
        )


def time_step(indices: torch.Tensor, weights: dict, args: argparse.Namespace) -> dict[str, float]:
    """Best milliseconds per transformer layer of every arm for one step's token-to-slot map."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from tuneship.serve.lora_kernels import SlotWeights
    from tuneship.serve.lora_ops import StepPlan
    from tuneship.serve.lora_punica import PunicaWrapperTuneship

    stock = PunicaWrapperCPU(max_num_batched_tokens=512, max_batches=16, device="cpu")
    stock.update_metadata(*_mapping(indices, args.slots))
    ours = PunicaWrapperTuneship(max_num_batched_tokens=512, max_batches=16, device="cpu")
    ours.plan_ = StepPlan(indices)
    torch_mm = PunicaWrapperTuneship(max_num_batched_tokens=512, max_batches=16, device="cpu")
    torch_mm.plan_, torch_mm.weights_ = ours.plan_, SlotWeights(packed=False)
    tokens = len(indices)
    inputs = {
        name: (
            torch.randn(tokens, width).to(torch.bfloat16),
            torch.zeros(tokens, sum(outs)).to(torch.bfloat16),
        )
        for name, (width, outs) in LAYERS.items()
    }
    arms = {
        "stock": stock.add_lora_linear,
        "per-slice": lambda *a: PunicaWrapperCPU.add_lora_linear(ours, *a),
        "torch-mm": torch_mm.add_lora_linear,
        "tuneship": ours.add_lora_linear,
    }

    def layer(call) -> None:
        for name, (_, outs) in LAYERS.items():
            x, y = inputs[name]
            call(y, x, *weights[name], 1.0, outs)

    return {arm: best_ms(lambda call=call: layer(call), args.repeats) for arm, call in arms.items()}


def _mapping(indices: torch.Tensor, slots: int) -> tuple:
    """The arguments of ``update_metadata`` for a step whose tokens use these adapter slots."""
    from vllm.lora.layers import LoRAMapping

    mapping = LoRAMapping(
        index_mapping=tuple(i + 1 for i in indices.tolist()), prompt_mapping=(1,), is_prefill=False
    )
    return mapping, list(range(1, slots + 1)), slots, 0


def best_ms(run, repeats: int) -> float:
    run()  # warm up (and lay out the adapters' weights once)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


if __name__ == "__main__":
    main()
