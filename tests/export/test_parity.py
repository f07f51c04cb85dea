"""The parity check of a merged export: what it computes equals what a reload of the file computes,
and the file it vouches for holds exactly the weights it checked."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneship.errors import ArtifactError
from tuneship.export.merge import export_merged
from tuneship.export.parity import (
    PARITY_PROMPTS,
    check_saved_tensors,
    compare_logits,
    last_logits,
    shared_prefix,
)
from tuneship.models import load_peft


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2], [1, 2]]) == 1  # identical rows keep their last token
    assert shared_prefix([[7], [7, 8]]) == 0
    assert shared_prefix([[1, 2, 3], [4, 2, 3]]) == 0


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def test_shared_prefix_logits_equal_each_prompt_run_whole(tiny_base, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    blocks = last_logits(model, tokenizer, PARITY_PROMPTS)
    assert len(blocks) == len(PARITY_PROMPTS) + 1  # the system turn once, then each prompt's own rows
    for prompt, own in zip(PARITY_PROMPTS, blocks[1:], strict=True):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        with torch.no_grad():
            whole = model(input_ids=torch.tensor([ids])).logits[0]
        shared = blocks[0].shape[0]
        assert torch.allclose(whole[:shared], blocks[0], atol=1e-4)
        assert torch.allclose(whole[shared:], own, atol=1e-4)


def test_bf16_parity_is_what_a_reload_of_the_file_computes(tiny_run, tokenizer, tmp_path):
    """The check computes with the weights rounded in memory; a float32 reload of the saved file
    must give the same logits to the last bit, and so the same parity numbers."""
    result = export_merged(tiny_run.run_dir, tmp_path / "bf16", dtype="bf16")
    assert result.parity.passed and result.parity.dtype == "bf16"
    reloaded = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    reference_model = load_peft(result.base, tiny_run.adapter_dir).eval()
    reference = last_logits(reference_model, tokenizer, PARITY_PROMPTS)
    again = compare_logits(reference, last_logits(reloaded, tokenizer, PARITY_PROMPTS), "bf16", 8)
    assert again == result.parity
    assert result.parity.max_abs_logit_diff > 0  # rounding to bf16 did move the logits


def test_a_file_that_differs_from_the_checked_weights_is_refused(tiny_export, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_export.out, dtype=torch.float32)
    check_saved_tensors(model, tiny_export.out)  # the export itself passes (tied lm_head left out)
    name, weight = next((n, p) for n, p in model.named_parameters() if n.endswith("q_proj.weight"))
    with torch.no_grad():
        weight[0, 0] += 1e-3
    with pytest.raises(ArtifactError, match=f"{name} is not the tensor the parity check ran with"):
        check_saved_tensors(model, tiny_export.out)

    partial = tmp_path / "partial"
    shutil.copytree(tiny_export.out, partial)
    from safetensors.torch import load_file, save_file

    tensors = load_file(partial / "model.safetensors")
    dropped = next(n for n in tensors if n.endswith("v_proj.weight"))
    save_file({n: t for n, t in tensors.items() if n != dropped}, str(partial / "model.safetensors"))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_export.out, dtype=torch.float32)
    with pytest.raises(ArtifactError, match=f"lack 1 tensor\\(s\\) of the model \\(e.g. {dropped}\\)"):
        check_saved_tensors(fresh, partial)
