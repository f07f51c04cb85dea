import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import free_port, tiny_config, write_rows
from safetensors.torch import load_file

from tuneship.adapters import check_adapter
from tuneship.artifacts import read_json, read_yaml, sha256_file
from tuneship.config import load_config
from tuneship.errors import ArtifactError
from tuneship.train.config import TrainConfig
from tuneship.train.sft import train_model


@pytest.fixture(scope="module")
def small_data(ticket_rows, tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", ticket_rows[:32])


def test_lora_run_changes_adapter_not_base(tiny_base, tiny_run):
    base_before = load_file(str(tiny_base / "model.safetensors"))
    adapter = load_file(str(tiny_run.adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b), "lora_B starts at zero; training must move it"
    base_after = load_file(str(tiny_base / "model.safetensors"))
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_run_directory_records_config_lineage_and_metrics(tiny_base, tiny_run):
    record = read_yaml(tiny_run.run_dir / "run.yaml")
    assert record["config"]["max_steps"] == 30
    lineage = record["lineage"]
    assert lineage["base_model"]["path"] == str(tiny_base)
    assert len(lineage["base_model"]["weights_sha256"]) == 64
    assert lineage["data"]["sha256"] == sha256_file(lineage["data"]["path"])
    assert (
        lineage["chat_template_sha256"]
        == __import__("hashlib").sha256((tiny_run.run_dir / "chat_template.jinja").read_bytes()).hexdigest()
    )
    assert {"torch", "transformers", "peft", "trl"} <= set(lineage["versions"])
    # similar lengths: padding (measured) is cheaper than packing on CPU, so auto pads
    assert record["result"]["steps"] == 30 and record["result"]["packing"] is False
    assert 0 < record["result"]["padding_fraction"] < 0.25
    assert read_json(tiny_run.adapter_dir / "tuneship.json") == lineage
    metrics = [json.loads(line) for line in (tiny_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics) and any("tokens_per_second" in m for m in metrics)
    assert any("mean_token_accuracy" in m for m in metrics) and any(
        "eval_mean_token_accuracy" in m for m in metrics
    )
    assert record["result"]["num_tokens"] == max(m.get("num_input_tokens_seen", 0) for m in metrics) > 0
    assert any("eval_loss" in m for m in metrics), "held-out loss is logged"
    assert (tiny_run.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tiny_run.run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_epochs_auto_follows_openais_rule_for_the_row_count(tiny_base, ticket_rows, tmp_path, caplog):
    """20 rows: 3 epochs would show 60 examples, so auto raises it to ceil(100 / 20) = 5."""
    data = write_rows(tmp_path / "train.jsonl", ticket_rows[:20])
    config = tiny_config(tiny_base, data, tmp_path / "runs", "auto", max_steps=-1, batch_size=8)
    assert config.epochs == "auto" and not config.recomputes_activations
    with caplog.at_level("INFO", logger="tuneship"):
        result = train_model(config)
    assert "Schedule: 5 epochs (auto for 20 rows), batch 8" in caplog.text
    assert "gradient checkpointing off" in caplog.text
    summary = read_yaml(result.run_dir / "run.yaml")["result"]
    assert summary["epochs"] == 5.0 and summary["steps"] == 5 * 3  # ceil(20 / 8) steps an epoch
    assert summary["gradient_checkpointing"] is False


def test_rerun_without_force_is_refused(tiny_run):
    config = load_config(TrainConfig, **read_yaml(tiny_run.run_dir / "run.yaml")["config"])
    with pytest.raises(ArtifactError, match="already holds a trained adapter"):
        train_model(config)


def test_same_seed_gives_identical_adapter_weights(tiny_base, small_data, tmp_path):
    runs = [train_model(tiny_config(tiny_base, small_data, tmp_path / str(i), "r")) for i in range(2)]
    a, b = (load_file(str(r.adapter_dir / "adapter_model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packed_batches_have_no_padding(tiny_base, small_data, tmp_path):
    result = train_model(
        tiny_config(tiny_base, small_data, tmp_path, "packed", packing="always", max_steps=2)
    )
    assert result.summary["packing"] is True and result.summary["padding_fraction"] == 0.0


def test_auto_packing_follows_the_padding_it_would_save():
    from tuneship.train.packing import expected_padding, use_packing

    assert expected_padding([10] * 16, 8) == 0.0
    assert expected_padding([10, 30] * 8, 8) == pytest.approx(1 - 20 / 30)
    config = load_config(TrainConfig, data="x.jsonl")
    assert use_packing(config, [10, 300] * 8) and not use_packing(config, [100, 110] * 8)
    assert not use_packing(
        load_config(TrainConfig, data="x.jsonl", method="prompt-tuning", packing="always"), [1]
    )


@pytest.mark.parametrize("method", ["qlora", "dora", "full", "prompt-tuning"])
def test_other_methods_train_and_save(tiny_base, small_data, tmp_path, method, caplog):
    with caplog.at_level("INFO", logger="tuneship"):
        result = train_model(tiny_config(tiny_base, small_data, tmp_path, method, method=method, max_steps=2))
    assert result.summary["steps"] == 2
    assert read_json(result.adapter_dir / "tuneship.json")["method"] == method
    if method == "full":
        assert result.adapter_dir.name == "model" and (result.adapter_dir / "tokenizer.json").is_file()
        assert not torch.equal(
            load_file(str(result.adapter_dir / "model.safetensors"))["model.norm.weight"],
            load_file(str(tiny_base / "model.safetensors"))["model.norm.weight"],
        )
        return
    config = read_json(result.adapter_dir / "adapter_config.json")
    if method == "qlora":
        assert check_adapter(result.adapter_dir).ok and config["peft_type"] == "LORA"
    if method == "dora":
        assert "vLLM cannot serve DoRA" in caplog.text
        assert any("DoRA" in p for p in check_adapter(result.adapter_dir).problems)
    if method == "prompt-tuning":
        assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 20


def test_packed_sequences_do_not_attend_across_examples(tiny_base):
    """Packing is only correct if position ids that restart isolate the examples (sdpa on CPU).

    They do only without a KV cache: with ``use_cache`` on, transformers skips the check and
    the second example attends to the first. The trainer's loss therefore turns the cache off.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    a, b = torch.tensor([[5, 17, 99, 4, 300]]), torch.tensor([[42, 7, 1000]])
    with torch.no_grad():
        separate = torch.cat([model(a).logits, model(b).logits], dim=1)
        inputs = {
            "input_ids": torch.cat([a, b], dim=1),
            "position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]]),
        }
        packed = model(**inputs, use_cache=False).logits
        leaky = model(**inputs, use_cache=True).logits
    assert torch.allclose(separate, packed, atol=1e-5)
    assert not torch.allclose(separate, leaky, atol=1e-3), "if this passes, transformers changed: revisit"


def test_sparse_loss_is_trls_own_loss(tiny_base, small_data, tmp_path):
    """The subclass computes what TRL's loss (``loss_type="nll"``) computes, only cheaper on CPU,
    and leaves TRL's private metric state alone."""
    from tuneship.models import resolve_base
    from tuneship.train import sft
    from tuneship.train.render import render_dataset

    config = tiny_config(tiny_base, small_data, tmp_path, "eq", max_steps=1)
    base = resolve_base(config.base)
    tokenizer, template = sft.load_tokenizer(base, "")
    rows, _ = render_dataset(
        sft.load_dataset(config.data), tokenizer, config.max_length, template, config.loss_on
    )
    model, peft_config = sft.load_model(config, base, bf16=False)
    trainer = sft.build_trainer(config, tmp_path, model, peft_config, tokenizer, rows, [], bf16=False)
    batch = next(iter(trainer.get_train_dataloader()))
    sparse = trainer.compute_loss(trainer.model, dict(batch))
    assert trainer._total_train_tokens == 0 and not trainer._metrics["train"], "TRL's private state"
    trainer.sparse_loss = False
    stock = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(sparse, stock, rtol=1e-5), (sparse, stock)


def _cli(*args):
    return [sys.executable, "-m", "tuneship.entrypoints.cli", "train", *args]


def test_resume_after_sigkill_finishes_with_the_right_step_count(tiny_base, small_data, tmp_path):
    args = [
        "--data",
        str(small_data),
        "--base",
        str(tiny_base),
        "--runs-dir",
        str(tmp_path),
        "--name",
        "k",
        "--max-steps",
        "60",
        "--save-steps",
        "5",
        "--batch-size",
        "2",
        "--precision",
        "fp32",
        "--max-length",
        "160",
        "--lr",
        "1e-3",
    ]
    first = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "k" / "checkpoints" / "checkpoint-5" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "k" / "adapter").exists(), "killed mid-run: no adapter yet"
    refused = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert refused.returncode == 1 and "pass --resume or --force" in refused.stderr
    resumed = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True, env=os.environ)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stderr and "Trained 60 steps" in resumed.stdout
    # One progress display: the libraries' bars and warnings stay out of the console.
    for noise in ("Loading weights", "Truncating train dataset", "Map", "{'loss'", "it/s]"):
        assert noise not in resumed.stderr + resumed.stdout, noise
    assert "training" in resumed.stderr and "60/60" in resumed.stderr
    assert (tmp_path / "k" / "train.log").is_file()
    assert read_yaml(tmp_path / "k" / "run.yaml")["result"]["steps"] == 60
    assert check_adapter(tmp_path / "k" / "adapter").ok


def test_two_process_data_parallel_run_gives_a_valid_adapter(tiny_base, small_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): one report, one adapter, the right step count."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), "-m", "tuneship.entrypoints.cli", "train"]
    command += ["--data", str(small_data), "--base", str(tiny_base), "--runs-dir", str(tmp_path)]
    command += ["--name", "ddp", "--max-steps", "3", "--batch-size", "2", "--precision", "fp32"]
    command += ["--max-length", "160", "--eval-fraction", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Trained 3 steps") == 1, done.stdout
    record = read_yaml(tmp_path / "ddp" / "run.yaml")
    assert record["result"]["steps"] == 3
    assert check_adapter(tmp_path / "ddp" / "adapter").ok
    weights = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    assert any(float(w.abs().sum()) > 0 for key, w in weights.items() if "lora_B" in key)
