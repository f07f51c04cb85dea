import torch
from safetensors.torch import load_file

from tuneship.artifacts import read_json, read_yaml, sha256_file


def test_lora_run_changes_adapter_not_base(tiny_base, tiny_run):
    base_before = load_file(str(tiny_base / "model.safetensors"))
    adapter = load_file(str(tiny_run.adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b), "lora_B starts at zero; training must move it"
    base_after = load_file(str(tiny_base / "model.safetensors"))
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_run_directory_records_config_and_lineage(tiny_base, tiny_run):
    record = read_yaml(tiny_run.run_dir / "run.yaml")
    assert record["config"]["max_steps"] == 12
    lineage = record["lineage"]
    assert lineage["base_model"]["path"] == str(tiny_base)
    assert len(lineage["base_model"]["weights_sha256"]) == 64
    assert lineage["data"]["sha256"] == sha256_file(lineage["data"]["path"])
    assert len(lineage["chat_template_sha256"]) == 64
    assert {"torch", "transformers", "peft", "trl"} <= set(lineage["versions"])
    assert record["result"]["steps"] == 12
    assert read_json(tiny_run.adapter_dir / "tuneship.json") == lineage
    metrics = (tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 6 and '"loss"' in metrics[0]


def test_rerun_without_force_is_refused(tiny_run):
    import pytest
    from tuneship.train.train import TrainConfig, train_lora

    from tuneship.config import load_config
    from tuneship.errors import ArtifactError

    config = load_config(TrainConfig, **read_yaml(tiny_run.run_dir / "run.yaml")["config"])
    with pytest.raises(ArtifactError, match="already holds a trained adapter"):
        train_lora(config)
