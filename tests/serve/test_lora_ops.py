"""tuneship's CPU LoRA ops against vLLM's own torch ops, on random inputs.

For every token with an adapter the result must equal vLLM's; a token of the base model
(slot -1) must get no LoRA at all (vLLM's ops give it the last slot's: vllm-project/vllm#48421).
"""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as stock

from tuneship.serve.lora_kernels import SlotWeights
from tuneship.serve.lora_ops import (
    VERIFIED_VLLM,
    StepPlan,
    dense_expand,
    dense_shrink,
    expand,
    fast_ops_status,
    shrink,
    token_groups,
)

SLOTS, RANK, HIDDEN, OUT = 3, 16, 64, 96

# Token-to-slot maps: one adapter, contiguous runs, interleaved adapters, base rows among them.
MAPS = {
    "one adapter": [1] * 7,
    "runs": [0, 0, 0, 2, 2, 1, 1, 1, 1],
    "interleaved": [0, 2, 0, 1, 2, 1, 0],
    "base rows mixed in": [-1, -1, 0, 0, -1, 2, 2, -1, 1],
    "interleaved with base rows": [1, -1, 0, 1, -1, 0, 2, 1],
    "base only": [-1] * 5,
    "single token": [2],
}


# Outputs in bf16 hold LoRA terms of ~12 (up to ~70) on these random inputs: the shrink's sum
# order (ours and vLLM's differ) can flip a bf16 rounding, one ulp (0.0625-0.5); a wrong slot's
# weights or a skipped adapter move them by the terms' whole size.
BF16_OUTPUT = {"rtol": 1e-2, "atol": 0.25}


@pytest.fixture(autouse=True)
def _seeded():
    """The same random inputs on every run."""
    torch.manual_seed(0)


def _stacks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g).to(torch.bfloat16)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=g).to(torch.bfloat16)
    return a, b


@pytest.mark.parametrize("name", MAPS)
def test_shrink_and_expand_equal_vllm_on_adapter_rows_and_leave_base_rows_alone(name):
    indices = torch.tensor(MAPS[name], dtype=torch.long)
    tokens = len(indices)
    a, b = _stacks(seed=tokens)
    x = torch.randn(tokens, HIDDEN).to(torch.bfloat16)
    groups = token_groups(indices)
    has_adapter = indices >= 0

    ours = torch.full((tokens, RANK), 7.0)  # garbage the shrink must overwrite everywhere
    shrink(ours, x, a, groups, scale=0.5)
    theirs = torch.zeros(tokens, RANK)
    stock.bgmv_shrink(x, a, theirs, indices, 0.5)
    torch.testing.assert_close(ours[has_adapter], theirs[has_adapter], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[~has_adapter], torch.zeros_like(ours[~has_adapter]))

    base = torch.randn(tokens, 2 * OUT).to(torch.bfloat16)
    ours_y, theirs_y = base.clone(), base.clone()
    expand(ours_y, theirs, b, groups, offset=OUT, size=OUT, add_inputs=True)
    stock.bgmv_expand_slice(theirs, b, theirs_y, indices, OUT, OUT, True)
    torch.testing.assert_close(ours_y[has_adapter], theirs_y[has_adapter], **BF16_OUTPUT)
    assert torch.equal(ours_y[~has_adapter], base[~has_adapter]), "a base row was changed"
    assert torch.equal(ours_y[:, :OUT], base[:, :OUT]), "outside the slice was changed"


SLICES = (OUT, 32, 48)  # output slices of one fused layer (as qkv), each with its own A and B


def _slice_stacks(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g).to(torch.bfloat16) for _ in SLICES]
    b = [torch.randn(SLOTS, 1, size, RANK, generator=g).to(torch.bfloat16) for size in SLICES]
    return a, b


@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("name", MAPS)
def test_dense_ops_equal_vllm_on_adapter_rows_and_leave_base_rows_alone(name, add_inputs):
    indices = torch.tensor(MAPS[name], dtype=torch.long)
    tokens, has_adapter = len(indices), indices >= 0
    a, b = _slice_stacks(seed=tokens)
    x = torch.randn(tokens, HIDDEN).to(torch.bfloat16)
    plan = StepPlan(indices)

    ours = dense_shrink(x, a, plan, scale=0.5)
    assert ours.shape == (tokens, len(SLICES), RANK) and ours.dtype == torch.float32
    theirs = torch.zeros(len(SLICES), tokens, RANK)
    for i, stacked in enumerate(a):
        stock.bgmv_shrink(x, stacked, theirs[i], indices, 0.5)
    for i in range(len(SLICES)):
        torch.testing.assert_close(ours[has_adapter, i], theirs[i][has_adapter], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[~has_adapter], torch.zeros_like(ours[~has_adapter]))

    base = torch.randn(tokens, 8 + sum(SLICES)).to(torch.bfloat16)
    ours_y, theirs_y = base.clone(), base.clone()
    dense_expand(ours_y, ours, b, plan, 8, SLICES, add_inputs)
    offset = 8
    for i, stacked in enumerate(b):
        stock.bgmv_expand_slice(theirs[i], stacked, theirs_y, indices, offset, SLICES[i], add_inputs)
        offset += SLICES[i]
    torch.testing.assert_close(ours_y[has_adapter], theirs_y[has_adapter], **BF16_OUTPUT)
    assert torch.equal(ours_y[~has_adapter], base[~has_adapter]), "a base row was changed"
    assert torch.equal(ours_y[:, :8], base[:, :8]), "outside the slices was changed"


def test_dense_expand_takes_one_buffer_per_slice_and_equals_grouped_ops():
    indices = torch.tensor(MAPS["interleaved with base rows"])
    plan = StepPlan(indices)
    a, b = _slice_stacks(seed=3)
    shrunk = dense_shrink(torch.randn(len(indices), HIDDEN).to(torch.bfloat16), a, plan, 1.0)
    base = torch.randn(len(indices), sum(SLICES)).to(torch.bfloat16)
    dense_y, grouped_y = base.clone(), base.clone()
    dense_expand(dense_y, [shrunk[:, i] for i in range(len(SLICES))], b, plan, 0, SLICES, True)
    offset = 0
    for i, stacked in enumerate(b):
        expand(grouped_y, shrunk[:, i], stacked, plan.groups, offset, SLICES[i], True)
        offset += SLICES[i]
    torch.testing.assert_close(dense_y, grouped_y, **BF16_OUTPUT)


LONG_RUNS = [0] * 40 + [1] * 40  # two adapters' prefills: 40 tokens each


@pytest.mark.parametrize(
    ("indices", "dense"),
    [
        (MAPS["one adapter"], False),
        (MAPS["runs"], True),  # 3 adapters, 3 tokens each: few per adapter
        (MAPS["interleaved"], True),
        (MAPS["base rows mixed in"], True),
        (MAPS["interleaved with base rows"], True),
        (MAPS["base only"], False),
        (MAPS["single token"], False),
        ([0] * 300, False),
        (LONG_RUNS, False),  # more than DENSE_TOKENS_PER_GROUP each: a product per adapter
        (LONG_RUNS + [-1] * 10, False),
        ([0] * 30 + [1] * 30, True),
    ],
)
def test_plan_goes_dense_when_adapters_interleave_or_have_few_tokens_each(indices, dense):
    plan = StepPlan(torch.tensor(indices))
    assert plan.dense is dense
    assert plan.tokens == len(indices)
    assert (plan.base_rows is None) == (min(indices) >= 0)


def test_vllm_stock_ops_apply_the_last_adapter_to_base_rows():
    """The fault the plugin exists for, shown on vLLM's ops (if vLLM fixes it, re-verify)."""
    a, _ = _stacks(seed=1)
    x = torch.randn(2, HIDDEN).to(torch.bfloat16)
    out = torch.zeros(2, RANK)
    stock.bgmv_shrink(x, a, out, torch.tensor([-1, 0]), 1.0)
    assert out[0].abs().sum() > 0, "vLLM's op now skips base rows: the plugin may be retired"


def test_groups_are_slices_for_contiguous_slots_and_rows_otherwise():
    groups = dict(token_groups(torch.tensor([-1, 0, 0, 1, 0, -1])))
    assert set(groups) == {0, 1}
    assert groups[1] == slice(3, 4)
    assert groups[0].tolist() == [1, 2, 4]
    assert token_groups(torch.tensor([], dtype=torch.long)) == []


def test_status_names_the_verified_version_and_the_opt_out(monkeypatch):
    assert fast_ops_status(VERIFIED_VLLM)[0] is True
    active, line = fast_ops_status("0.33.0")
    assert not active and VERIFIED_VLLM in line and "0.33.0" in line
    assert fast_ops_status(VERIFIED_VLLM, device="cuda")[0] is False
    monkeypatch.setenv("TUNESHIP_CPU_LORA_OPS", "stock")
    assert fast_ops_status(VERIFIED_VLLM) == (
        False,
        "LoRA ops: vLLM's stock CPU ops (TUNESHIP_CPU_LORA_OPS=stock)",
    )


@pytest.mark.parametrize("buffers", ["none", "tuple", "tensor"])
@pytest.mark.parametrize(
    "name", ["one adapter", "runs", "base rows mixed in", "interleaved", "interleaved with base rows"]
)
def test_wrapper_equals_vllm_for_grouped_and_dense_steps(name, buffers):
    """add_lora_linear, and add_shrink + add_expand with a buffer per slice or one [slices, T, r]."""
    from tuneship.serve.lora_punica import PunicaWrapperTuneship

    indices = torch.tensor(MAPS[name])
    tokens, has_adapter = len(indices), indices >= 0
    wrapper = PunicaWrapperTuneship(max_num_batched_tokens=64, max_batches=8, device="cpu")
    wrapper.plan_ = StepPlan(indices)
    a, b = _slice_stacks(seed=5)
    x = torch.randn(tokens, HIDDEN).to(torch.bfloat16)
    base = torch.randn(tokens, sum(SLICES)).to(torch.bfloat16)
    ours, theirs = base.clone(), base.clone()
    if buffers != "none":
        garbage = torch.full((len(SLICES), tokens, RANK), 7.0)  # the shrink must overwrite it
        buffer = tuple(garbage) if buffers == "tuple" else garbage
        wrapper.add_shrink(buffer, x, tuple(a), 1.0)
        wrapper.add_expand(ours, buffer, tuple(b), SLICES)
    else:
        wrapper.add_lora_linear(ours, x, tuple(a), tuple(b), 1.0, SLICES)
    offset = 0
    for i in range(len(SLICES)):
        buffer = torch.zeros(tokens, RANK)
        stock.bgmv_shrink(x, a[i], buffer, indices, 1.0)
        stock.bgmv_expand_slice(buffer, b[i], theirs, indices, offset, SLICES[i], True)
        offset += SLICES[i]
    torch.testing.assert_close(ours[has_adapter], theirs[has_adapter], **BF16_OUTPUT)
    assert torch.equal(ours[~has_adapter], base[~has_adapter])


# (scale, SlotWeights' packed): vLLM's layers pass scale 1.0, where vLLM's packed bf16 kernel
# runs if this CPU has it (None: when available); any other scale, or packed off, runs torch's.
KERNELS = [(1.0, None), (1.0, False), (0.5, None)]


def _expected_kernel(scale: float, packed: bool | None) -> str:
    from tuneship.serve.lora_kernels import packed_kernel_available

    on = packed is not False and scale == 1.0 and packed_kernel_available()
    return "packed" if on else "torch"


def _kernels_used(weights) -> set[str]:
    return {"packed" if layout.packed else "torch" for _, layout in weights._laid_out.values()}


def _load_into_slot(slot: int, a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """A new adapter in ``slot``, copied in place as vLLM's set_lora does."""
    for stacked in (*a, *b):
        stacked[slot].copy_(torch.randn(stacked[slot].shape).to(torch.bfloat16))


def _stock_linear(y, x, a, b, indices, scale):
    offset = 0
    for i in range(len(SLICES)):
        buffer = torch.zeros(len(indices), RANK)
        stock.bgmv_shrink(x, a[i], buffer, indices, scale)
        stock.bgmv_expand_slice(buffer, b[i], y, indices, offset, SLICES[i], True)
        offset += SLICES[i]


@pytest.mark.parametrize(("scale", "packed"), KERNELS)
def test_grouped_linear_lays_a_slot_out_once_and_again_when_an_adapter_is_loaded_into_it(scale, packed):
    """One product each way per adapter group for all slices; the laid-out weights are kept
    until vLLM copies another adapter into the slot (in place), then laid out again."""
    from tuneship.serve.lora_ops import grouped_linear

    indices = torch.tensor(MAPS["base rows mixed in"])
    has_adapter = indices >= 0
    plan = StepPlan(indices)
    a, b = _slice_stacks(seed=11)
    x = torch.randn(len(indices), HIDDEN).to(torch.bfloat16)
    weights = SlotWeights(packed)
    for step in range(3):
        if step == 2:
            _load_into_slot(0, a, b)
        base = torch.randn(len(indices), sum(SLICES)).to(torch.bfloat16)
        ours, theirs = base.clone(), base.clone()
        grouped_linear(ours, x, a, b, plan, scale, weights)
        _stock_linear(theirs, x, a, b, indices, scale)
        torch.testing.assert_close(ours[has_adapter], theirs[has_adapter], **BF16_OUTPUT)
        assert torch.equal(ours[~has_adapter], base[~has_adapter]), "a base row was changed"
        assert len(weights._laid_out) == 3  # slots 0, 1, 2: each laid out once, replaced in place
    assert _kernels_used(weights) == {_expected_kernel(scale, packed)}


@pytest.mark.parametrize(("scale", "packed"), KERNELS)
@pytest.mark.parametrize("name", MAPS)
def test_dense_linear_equals_vllm_for_every_token_map_and_follows_a_slot_reload(name, scale, packed):
    """Two products for all slots and slices (each row keeping its own slot's columns) give
    vLLM's result on adapter rows, leave base rows as they were, and see a slot's new adapter."""
    from tuneship.serve.lora_ops import dense_linear

    indices = torch.tensor(MAPS[name])
    has_adapter = indices >= 0
    plan = StepPlan(indices)
    a, b = _slice_stacks(seed=len(indices))
    x = torch.randn(len(indices), HIDDEN).to(torch.bfloat16)
    weights = SlotWeights(packed)
    for step in range(2):
        if step == 1:
            _load_into_slot(1, a, b)
        base = torch.randn(len(indices), sum(SLICES) + 5).to(torch.bfloat16)
        ours, theirs = base.clone(), base.clone()
        dense_linear(ours, x, a, b, plan, scale, weights)
        _stock_linear(theirs, x, a, b, indices, scale)
        torch.testing.assert_close(ours[has_adapter], theirs[has_adapter], **BF16_OUTPUT)
        assert torch.equal(ours[~has_adapter], base[~has_adapter]), "a base row was changed"
        assert torch.equal(ours[:, sum(SLICES) :], base[:, sum(SLICES) :]), "beyond the slices"
    assert _kernels_used(weights) <= {_expected_kernel(scale, packed)}
