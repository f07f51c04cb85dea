import subprocess
import sys
import time
from pathlib import Path

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
    for command in (
        "train",
        "data",
        "export",
        "adapters",
        "serve",
        "eval",
        "ab",
        "verify",
        "demo",
        "service",
    ):
        assert f"  {command}" in out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, tuneship.entrypoints.cli; from click.testing import CliRunner; "
        "[CliRunner().invoke(tuneship.entrypoints.cli.cli, [*c.split(), '--help']) for c in "
        "('train', 'data check', 'export merge', 'adapters list', 'serve', 'eval', 'ab', 'verify', 'service', "
        "'service keys create')]; "
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


def _flags(command) -> dict[str, object]:
    """A click command's options by parameter name."""
    return {p.name: p for p in command.params}


def _settings_fields(cls) -> set[str]:
    """Every field of a settings model, nested models' fields flat (as the CLI names them)."""
    from pydantic import BaseModel

    names = set()
    for name, info in cls.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= _settings_fields(info.annotation)
        else:
            names.add(name)
    return names


def test_every_setting_has_a_flag():
    from tuneship.clients.config import EvalSettings
    from tuneship.entrypoints.cli.evaluate import AB_ONLY, ab, eval_, verify
    from tuneship.entrypoints.cli.serve import serve
    from tuneship.entrypoints.cli.train import train
    from tuneship.entrypoints.config import FidelitySettings
    from tuneship.serve.config import ServeConfig
    from tuneship.train.config import TrainConfig

    assert _settings_fields(TrainConfig) <= set(_flags(train))
    assert _settings_fields(ServeConfig) <= set(_flags(serve))
    assert _settings_fields(EvalSettings) <= set(_flags(ab))
    assert _settings_fields(EvalSettings) - set(AB_ONLY) <= set(_flags(eval_))
    assert _settings_fields(FidelitySettings) <= set(_flags(verify))
    # the names users already type keep working
    train_flags = {opt for p in train.params for opt in p.opts}
    assert {
        "--lr",
        "--learning-rate",
        "--epochs",
        "--batch-size",
        "--grad-accum",
        "--lora-dropout",
    } <= train_flags
    assert {"--gradient-checkpointing", "--num-virtual-tokens", "--eval-max-rows"} <= train_flags
    serve_flags = {opt for p in serve.params for opt in p.opts}
    assert {"--adapter", "--vllm-arg", "--kv-cache-gb", "--startup-timeout"} <= serve_flags
    assert {"--scorer", "--max-tokens"} <= {opt for p in ab.params for opt in p.opts}


def test_endpoint_and_api_key_come_from_the_environment_in_every_command():
    from tuneship.entrypoints.cli import cli

    def commands(group, prefix=()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, (*prefix, name))
            else:
                yield (*prefix, name), command

    seen = 0
    for path, command in commands(cli):
        flags = _flags(command)
        for name, env in (("endpoint", "TUNESHIP_ENDPOINT"), ("api_key", "TUNESHIP_API_KEY")):
            if name in flags:
                assert flags[name].envvar == env, (path, name)
                seen += 1
    assert seen >= 12  # eval, ab, verify, serve (key only), adapters list/load/unload


def test_flag_help_is_the_description_and_default():
    from tuneship.entrypoints.cli.train import train

    result = CliRunner().invoke(train, ["--help"], terminal_width=200)
    assert "--lora-r INTEGER" in result.output and "LoRA rank  [default: 16]" in result.output
    assert "--method [lora|dora|qlora|full|prompt-tuning|dpo]" in result.output


def test_a_bad_choice_is_one_clear_line(tmp_path):
    from tuneship.entrypoints.cli import cli

    flag = CliRunner().invoke(cli, ["train", "--data", "d.jsonl", "--method", "bogus"])
    assert flag.exit_code == 2 and "Invalid value for '--method': 'bogus' is not one of" in flag.output
    config = tmp_path / "c.yaml"
    config.write_text("data: d.jsonl\nmethod: bogus\nlora_r: 0\nmax_steps: 0\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: invalid settings: method: input should be 'lora'")
    assert "(got 'bogus')" in line and "lora_r: input should be greater than or equal to 1" in line


def test_settings_are_checked_when_built_not_only_when_loaded(tmp_path):
    import pytest
    from pydantic import ValidationError

    from tuneship.serve.config import ServeConfig
    from tuneship.train.config import TrainConfig

    with pytest.raises(ValidationError, match="method"):
        TrainConfig(data="d.jsonl", method="bogus")
    with pytest.raises(ValidationError, match="nothing to train"):
        TrainConfig(data="d.jsonl", max_steps=0)
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig(data="d.jsonl", learning_rat=0.1)
    config = TrainConfig(data="d.jsonl")
    with pytest.raises(ValidationError, match="lora_r"):
        config.lora_r = 0  # assignment is checked too
    with pytest.raises(ValidationError, match="API key"):
        ServeConfig(host="0.0.0.0")
    # file settings are stored absolute, so the run record works from anywhere
    assert config.data == str(Path("d.jsonl").resolve())
    assert config.run_dir.name == "d"


def test_defaults_then_yaml_then_flags(tmp_path, monkeypatch):
    import tuneship.train.sft as sft
    from tuneship.entrypoints.cli import cli
    from tuneship.errors import TuneshipError

    seen = {}

    def fake_train(config, force=False, resume=False):
        seen["config"] = config
        raise TuneshipError("stop here")

    monkeypatch.setattr(sft, "train_model", fake_train)
    config = tmp_path / "c.yaml"
    config.write_text("data: d.jsonl\nlearning_rate: 0.1\nlora_r: 8\nskip_invalid: true\n")
    args = ["train", "--config", str(config), "--lr", "0.5", "--no-skip-invalid", "--epochs", "2"]
    result = CliRunner().invoke(cli, args)
    assert "stop here" in result.output
    c = seen["config"]
    assert (c.learning_rate, c.lora_r, c.skip_invalid, c.epochs, c.batch_size) == (0.5, 8, False, 2.0, 8)


def test_settings_publish_a_json_schema():
    from tuneship.clients.config import EvalSettings
    from tuneship.serve.config import ServeConfig
    from tuneship.train.config import TrainConfig

    schema = TrainConfig.model_json_schema()
    assert schema["required"] == ["data"]
    assert schema["properties"]["method"]["enum"] == ["lora", "dora", "qlora", "full", "prompt-tuning", "dpo"]
    assert schema["properties"]["lora_r"]["minimum"] == 1
    assert all(p.get("description") for p in schema["properties"].values())
    assert ServeConfig.model_json_schema()["properties"]["port"]["default"] == 8000
    assert "Sampling" in EvalSettings.model_json_schema()["$defs"]


def test_adapters_list_without_a_server_still_lists_the_registry(tmp_path):
    from tuneship.entrypoints.cli import cli
    from tuneship.serve.control import status

    s = status("http://127.0.0.1:9/v1", None, tmp_path)
    assert s.server_error and s.live == [] and s.adapters == []
    result = CliRunner().invoke(
        cli, ["adapters", "list", "--endpoint", "http://127.0.0.1:9/v1", "--registry", str(tmp_path)]
    )
    assert result.exit_code == 0 and "No server: cannot reach" in result.output
    assert f"Registry {tmp_path}: 0 adapter(s)" in result.output


def test_data_check_reads_what_train_would(tuneship_home, tmp_path):
    from helpers import TICKETS

    from tuneship.entrypoints.cli import cli

    config = tmp_path / "c.yaml"
    config.write_text(f"data: {TICKETS / 'train.jsonl'}\nmax_length: 100\nmethod: lora\nskip_invalid: true\n")
    result = CliRunner().invoke(cli, ["data", "check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "format messages, 600 rows" in result.output and "longer than max_length 100:" in result.output


def test_data_check_is_a_gate(tuneship_home, tmp_path):
    """Exit 1 when training would refuse the data, 0 when it would train (--skip-invalid: what
    would be dropped); --json is the typed result; no message names a flag that was not passed."""
    import json

    from tuneship.train.datacheck import DataCheck

    good = [{"prompt": f"p{i}", "completion": "c"} for i in range(3)]
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\n".join(json.dumps(r).encode() for r in good) + b'\n{"prompt": "\xe9", "completion": "c"}\n'
    )
    invoke = CliRunner().invoke

    refused = invoke(cli, ["data", "check", str(path)])
    assert refused.exit_code == 1, refused.output
    assert f"{path}:4: not valid UTF-8 (byte 0xe9 in 'prompt'; save the file as UTF-8)" in refused.output
    assert "Refused: 1 invalid row(s); training would refuse this data" in refused.output
    assert "skip" not in refused.output.lower()  # neither "--skip-invalid" nor "Skipping"
    assert "chat template: the tokenizer's own of SmolLM2-135M-Instruct" in refused.output

    skipped = invoke(cli, ["data", "check", str(path), "--skip-invalid"])
    assert skipped.exit_code == 0, skipped.output
    assert "Passed: 1 invalid row(s) would be dropped; 3 examples would train" in skipped.output

    as_json = invoke(cli, ["data", "check", str(path), "--json"])
    assert as_json.exit_code == 1
    report = DataCheck.model_validate_json(as_json.stdout)
    assert (report.passed, report.rows, report.examples, report.format) == (False, 4, 3, "prompt-completion")
    assert report.problems == [f"{path}:4: not valid UTF-8 (byte 0xe9 in 'prompt'; save the file as UTF-8)"]

    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    passed = invoke(cli, ["data", "check", str(path)])
    assert passed.exit_code == 0 and "Passed: all 3 examples are valid" in passed.output

    path.write_text('{"question": "q"}\n')
    nothing = invoke(cli, ["data", "check", str(path)])
    assert nothing.exit_code == 1 and "Refused: no usable rows" in nothing.output
    assert f"{path}:1: keys 'question' fit no format" in nothing.output


def test_data_check_config_is_what_train_reads(tuneship_home, tmp_path):
    """--config takes train's own settings file: data, format, template, max length, skip_invalid."""
    import json

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "Plain text, trained on every token."}) + "\n")
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {data}\nchat_template: {template}\nlora_r: 8\nmax_length: 64\n")
    text = CliRunner().invoke(cli, ["data", "check", "--config", str(config)])
    assert text.exit_code == 0, text.output
    assert "format text, 1 rows, 0 invalid" in text.output
    assert (
        "no chat template (text rows: every token carries loss, end-of-sequence token appended)"
        in text.output
    )
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    chat = CliRunner().invoke(cli, ["data", "check", "--config", str(config), "--json"])
    report = json.loads(chat.stdout)
    assert chat.exit_code == 0 and report["chat_template"] == str(template)
    assert "".join(piece for piece, _ in report["example"]["pieces"]) == "[user] p\n[assistant] c\n"
    bad = CliRunner().invoke(cli, ["data", "check", "--config", str(config), "--format", "alpaca"])
    assert bad.exit_code == 1 and f"{data}:1: missing field 'instruction'" in bad.output
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text('{"prompt": "q", "completion": "a"}\n{"prompt": "q2"}\n')
    with config.open("a") as f:
        f.write(f"eval_data: {held_out}\n")
    refused = CliRunner().invoke(cli, ["data", "check", "--config", str(config)])
    assert refused.exit_code == 1 and f"{held_out}:2: missing field 'completion'" in refused.output
