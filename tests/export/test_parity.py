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
    PARITY_CONVERSATION,
    check_saved_tensors,
    compare_logits,
    conversation_logits,
)
from tuneship.models import load_peft


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def test_the_check_scores_every_token_of_a_conversation_with_assistant_turns(tiny_base, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(PARITY_CONVERSATION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    logits = conversation_logits(model, tokenizer)
    assert logits.dtype == torch.float32 and logits.shape == (len(ids), model.config.vocab_size)
    answers = [m["content"] for m in PARITY_CONVERSATION if m["role"] == "assistant"]
    assert len(answers) >= 3 and all(a in text for a in answers)
    with torch.no_grad():
        assert torch.equal(logits, model(input_ids=torch.tensor([ids])).logits[0])


def test_bf16_parity_is_what_a_reload_of_the_file_computes(tiny_run, tokenizer, tmp_path):
    """The check computes with the weights rounded in memory; a float32 reload of the saved file
    must give the same logits to the last bit, and so the same parity numbers."""
    result = export_merged(tiny_run.run_dir, tmp_path / "bf16", dtype="bf16")
    assert result.parity.passed and result.parity.dtype == "bf16"
    reloaded = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32).eval()
    reference_model = load_peft(result.base, tiny_run.adapter_dir).eval()
    reference = conversation_logits(reference_model, tokenizer)
    again = compare_logits(reference, conversation_logits(reloaded, tokenizer), "bf16")
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


@pytest.mark.parametrize("wrong", ["doubled", "last layer left out"])
def test_a_wrong_merge_is_refused_and_nothing_is_written(tiny_base, tmp_path, monkeypatch, wrong):
    """PEFT's merge made wrong on purpose after the reference was computed: the adapter's delta
    twice, or the last layer's modules left unmerged. A correct merge of the same adapter passes."""
    from helpers import make_adapter
    from peft.tuners.lora import LoraModel

    adapter = make_adapter(tiny_base, tmp_path / "adapter", seed=5)
    assert export_merged(adapter, tmp_path / "right").parity.passed
    last = f"layers.{AutoModelForCausalLM.from_pretrained(tiny_base).config.num_hidden_layers - 1}."
    original = LoraModel.merge_and_unload
    changed = []

    factor, where = (2.0, "") if wrong == "doubled" else (0.0, last)  # "" is in every name

    def wrong_merge(self, *args, **kwargs):
        for name, module in self.model.named_modules():
            if isinstance(getattr(module, "scaling", None), dict) and where in name:
                module.scaling["default"] *= factor
                changed.append(name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "merge_and_unload", wrong_merge)
    with pytest.raises(ArtifactError, match="merged model does not match base \\+ adapter"):
        export_merged(adapter, tmp_path / "wrong")
    assert changed and not (tmp_path / "wrong").exists()
