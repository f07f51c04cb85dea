import subprocess
import sys
import time

from click.testing import CliRunner

from tuneship.entrypoints.cli import cli


def test_help_is_fast_and_lists_the_commands():
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "tuneship.entrypoints.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Interpreter start included; heavy libraries must not load for --help.
    assert time.perf_counter() - started < 2.0
    for command in ("train", "export", "serve", "eval", "ab", "demo"):
        assert f"  {command}" in out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, tuneship.entrypoints.cli; from click.testing import CliRunner; "
        "CliRunner().invoke(tuneship.entrypoints.cli.cli, ['train', '--help']); "
        "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'vllm') if m in sys.modules])"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_hub_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    result = CliRunner().invoke(
        cli,
        ["train", "--data", str(data), "--base", "someorg/some-model", "--runs-dir", str(tmp_path / "runs")],
    )
    assert result.exit_code == 1
    assert "could not fetch 'someorg/some-model'" in result.output
    assert "Traceback" not in result.output


def test_bad_data_is_reported_before_any_model_loads(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": 1, "completion": "c"}\n')
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--base", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert f"{data}:2: field 'prompt' is not a string" in result.output


def test_unknown_setting_in_yaml_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: x.jsonl\nlearning_rat: 0.1\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "unknown setting(s): learning_rat" in result.output


def test_every_shipped_preset_loads():
    from helpers import REPO

    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig

    presets = sorted((REPO / "train" / "configs").glob("*.yaml"))
    assert presets
    for preset in presets:
        assert preset.read_text().startswith("# "), f"{preset} must open with the command that uses it"
        load_config(TrainConfig, preset)
