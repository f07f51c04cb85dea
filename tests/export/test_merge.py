import json

import pytest

from tuneship.artifacts import read_json, sha256_file
from tuneship.errors import ArtifactError
from tuneship.export.check import check_adapter, fitting_max_lora_rank
from tuneship.export.merge import export_merged


@pytest.fixture(scope="module")
def merged(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny"
    return export_merged(tiny_run.run_dir, out, dtype="fp32")


def test_merged_model_matches_base_plus_adapter(merged):
    parity = read_json(merged.out / "parity.json")
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-3 and parity["greedy_agreement"] == 1.0


def test_merged_directory_reloads_with_transformers(merged, tiny_base, tiny_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(merged.out, dtype=torch.float32)
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), tiny_run.adapter_dir
    )
    ids = torch.tensor([[1, 42, 314, 2718, 99]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, peft(ids).logits, atol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)(ids).logits
    assert not torch.allclose(reloaded(ids).logits, plain, atol=1e-3), "the merge must change the model"


def test_export_writes_manifest_tokenizer_and_generation_config(merged):
    manifest = read_json(merged.out / "manifest.json")
    for name, digest in manifest["files"].items():
        assert sha256_file(merged.out / name) == digest
    assert {"model.safetensors", "tokenizer.json", "config.json", "parity.json"} <= set(manifest["files"])
    generation = json.loads((merged.out / "generation_config.json").read_text())
    assert 2 in generation["eos_token_id"]  # <|im_end|>, the end-of-turn token
    assert manifest["lineage"]["kind"] == "merged-model"


def test_existing_export_is_not_overwritten(merged, tiny_run):
    before = sha256_file(merged.out / "model.safetensors")
    with pytest.raises(ArtifactError, match="already exists"):
        export_merged(tiny_run.run_dir, merged.out)
    assert sha256_file(merged.out / "model.safetensors") == before


def test_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import tuneship.export.merge as merge

    monkeypatch.setattr(
        merge, "compare_logits", lambda *a: {"max_abs_logit_diff": 99.0, "greedy_agreement": 0.0}
    )
    with pytest.raises(ArtifactError, match="does not match"):
        export_merged(tiny_run.run_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_wrong_base_is_refused(tiny_run, default_base, tmp_path):
    with pytest.raises(ArtifactError, match="was trained on"):
        export_merged(tiny_run.run_dir, tmp_path / "out", base_spec=str(default_base.path))


def test_adapter_check_names_the_problem(tiny_run, tmp_path):
    import shutil

    assert check_adapter(tiny_run.adapter_dir).ok
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run.adapter_dir, bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert any("unreadable" in p for p in check_adapter(bad).problems)
    (bad / "adapter_config.json").unlink()
    assert check_adapter(bad).problems == [f"no adapter_config.json in {bad}"]
    with pytest.raises(ArtifactError, match="neither a run directory nor a PEFT adapter"):
        export_merged(bad, tmp_path / "out")


def test_max_lora_rank_is_the_smallest_allowed_value():
    assert [fitting_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 33, 300)] == [1, 8, 8, 16, 16, 64, 320]
