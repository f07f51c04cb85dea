"""The run's chat template reaches the server: it travels with the adapter, `tuneship serve` passes it
to vLLM (or refuses adapters that need different ones), and the hot-load guard holds to it.

One real vLLM server for the module: the tiny base plus two adapters trained with a custom template.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from helpers import (
    API_KEY,
    CLI,
    TICKETS,
    free_port,
    make_adapter,
    registry_server_config,
    tiny_config,
    write_rows,
)

from tuneship.adapters import adapter_chat_template, plan_chat_template
from tuneship.artifacts import CHAT_TEMPLATE
from tuneship.chat import model_chat_template, template_sha256
from tuneship.errors import ArtifactError, TuneshipError

# A ChatML variant: same turn markers as the tiny base's (SmolLM2's) template, but the system turn
# is worded differently, so every ticket prompt renders to other token ids.
CUSTOM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are the ticket desk.<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|im_start|>system\\nTicket desk rules: ' + message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
OTHER = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def _dir(root: Path, name: str, template: str | None = None, recorded: str | None = None) -> Path:
    """A bare adapter directory holding only what the template contract reads."""
    path = root / name
    path.mkdir(parents=True)
    if template is not None:
        (path / CHAT_TEMPLATE).write_text(template)
    lineage = {"kind": "adapter", **({"chat_template_sha256": recorded} if recorded else {})}
    (path / "tuneship.json").write_text(json.dumps(lineage))
    return path


# --- the decision, on tiny directories ---------------------------------------------------------


def test_nothing_to_pass_when_adapters_use_the_base_template_or_record_none(tmp_path):
    base = "BASE {{ messages }}"
    adapters = {
        "same-file": _dir(tmp_path, "a", template=base),
        "same-hash": _dir(tmp_path, "b", recorded=template_sha256(base)),
        "foreign": _dir(tmp_path, "c"),
    }
    plan = plan_chat_template(adapters, base)
    assert plan.file is None and plan.sha256 == template_sha256(base)
    assert plan.unrecorded == ("foreign",)
    assert "the base model's own" in plan.describe() and "foreign" in plan.describe()
    assert plan_chat_template({}, None).sha256 is None


def test_one_shared_custom_template_is_passed(tmp_path):
    adapters = {"b": _dir(tmp_path, "b", recorded=template_sha256(CUSTOM)), "a": _dir(tmp_path, "a", CUSTOM)}
    plan = plan_chat_template(adapters, "BASE")
    assert plan.file == tmp_path / "a" / CHAT_TEMPLATE and plan.sha256 == template_sha256(CUSTOM)
    assert plan.adapters == ("a", "b")
    assert "--chat-template" in plan.describe() and "every model" in plan.describe()
    # A base without a template: the adapters' is passed all the same.
    assert plan_chat_template(adapters, None).file == plan.file


@pytest.mark.parametrize("base_is_one_of_them", [True, False])
def test_adapters_needing_different_templates_are_refused_with_the_reason(tmp_path, base_is_one_of_them):
    base = "BASE"
    adapters = {"custom": _dir(tmp_path, "custom", CUSTOM), "other": _dir(tmp_path, "other", OTHER)}
    if base_is_one_of_them:
        adapters["other"] = _dir(tmp_path, "plain", base)
    with pytest.raises(ArtifactError) as refused:
        plan_chat_template(adapters, base)
    message = str(refused.value)
    assert "vLLM applies one template per server" in message
    assert f"sha256 {template_sha256(CUSTOM)[:12]}: custom" in message
    assert ("(the base model's own): other" in message) == base_is_one_of_them
    assert "tuneship export" in message and "server of its own" in message


def test_a_custom_template_known_only_by_its_hash_cannot_be_passed(tmp_path):
    adapters = {"old": _dir(tmp_path, "old", recorded=template_sha256(CUSTOM))}
    with pytest.raises(ArtifactError, match="its text is not with the adapter"):
        plan_chat_template(adapters, "BASE")


def test_the_adapter_template_falls_back_to_its_run_then_its_lineage(tmp_path):
    run = tmp_path / "run"
    adapter = _dir(run, "adapter", recorded=template_sha256(CUSTOM))
    (run / "run.yaml").write_text("{}\n")
    (run / CHAT_TEMPLATE).write_text(CUSTOM)
    assert adapter_chat_template(adapter).file == run / CHAT_TEMPLATE
    (run / "run.yaml").unlink()  # not a run directory: the lineage's hash alone
    found = adapter_chat_template(adapter)
    assert found.file is None and found.sha256 == template_sha256(CUSTOM)
    (adapter / CHAT_TEMPLATE).write_text(OTHER)  # a file that is not what training recorded
    with pytest.raises(ArtifactError, match="is not the chat template the adapter was trained with"):
        adapter_chat_template(adapter)


def test_the_base_template_is_read_from_files_as_transformers_reads_it(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    assert model_chat_template(tiny_base) == AutoTokenizer.from_pretrained(tiny_base).chat_template
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
        )
    )
    assert model_chat_template(tmp_path) == "D"
    (tmp_path / CHAT_TEMPLATE).write_text("F")
    assert model_chat_template(tmp_path) == "F"
    assert model_chat_template(tmp_path / "nothing") is None


# --- the template travels with the adapter ---------------------------------------------------


@pytest.fixture(scope="module")
def custom_run(tiny_base, tmp_path_factory):
    """A short LoRA run on the tiny base, trained with the CUSTOM template file."""
    from tuneship.train.sft import train_model

    work = tmp_path_factory.mktemp("custom-run")
    rows = [json.loads(line) for line in (TICKETS / "train.jsonl").read_text().splitlines()[:16]]
    (work / "custom.jinja").write_text(CUSTOM)
    config = tiny_config(
        tiny_base,
        write_rows(work / "train.jsonl", rows),
        work / "runs",
        "custom",
        chat_template=str(work / "custom.jinja"),
        max_steps=2,
        max_length=256,
    )
    return train_model(config)


def _plain_adapter(tiny_base, path: Path, seed: int = 2) -> Path:
    """A random adapter that carries the tiny base's own template (as a run without --chat-template)."""
    make_adapter(tiny_base, path, seed=seed)
    (path / CHAT_TEMPLATE).write_text(model_chat_template(tiny_base))
    return path


def _custom_adapter(tiny_base, path: Path, seed: int = 3) -> Path:
    make_adapter(tiny_base, path, seed=seed)
    (path / CHAT_TEMPLATE).write_text(CUSTOM)
    return path


def test_training_writes_the_template_into_the_adapter(custom_run):
    from tuneship.lineage import read_lineage

    assert (custom_run.adapter_dir / CHAT_TEMPLATE).read_text() == CUSTOM
    assert read_lineage(custom_run.adapter_dir).chat_template_sha256 == template_sha256(CUSTOM)


def test_registry_and_adapter_only_export_carry_the_template(custom_run, tmp_path):
    from tuneship.export.adapter import export_adapter
    from tuneship.serve.registry import Registry

    registry = Registry(tmp_path / "registry")
    entry = registry.add("custom", custom_run.run_dir)
    assert (entry.path / CHAT_TEMPLATE).read_text() == CUSTOM
    assert entry.chat_template_sha256 == template_sha256(CUSTOM)
    older = shutil.copytree(custom_run.run_dir, tmp_path / "older-run")  # a run from before this change
    (older / "adapter" / CHAT_TEMPLATE).unlink()
    assert (registry.add("older", older).path / CHAT_TEMPLATE).read_text() == CUSTOM
    export_adapter(older, tmp_path / "export")
    assert (tmp_path / "export" / CHAT_TEMPLATE).read_text() == CUSTOM


# --- serving ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def custom_server(tiny_base, custom_run, tmp_path_factory):
    """The tiny base with a registry of two adapters that share the CUSTOM template; hot loading on."""
    from tuneship.serve.registry import Registry
    from tuneship.serve.server import VLLMServer

    work = tmp_path_factory.mktemp("custom-server")
    registry = Registry(work / "registry")
    registry.add("custom", custom_run.run_dir)
    registry.add("custom-alt", _custom_adapter(tiny_base, work / "alt"))
    config = registry_server_config(registry.root, work, "tiny-base", base=str(tiny_base))
    with VLLMServer(config) as server:
        yield server


def _prompts(count: int = 6) -> list[list[dict]]:
    rows = [json.loads(line) for line in (TICKETS / "eval.jsonl").read_text().splitlines()[:count]]
    return [row["messages"][:-1] for row in rows]


def test_a_custom_template_run_served_as_lora_passes_the_template_check(custom_server, custom_run, tiny_base):
    from transformers import AutoTokenizer

    from tuneship.chat import render_prompt, run_chat_template
    from tuneship.entrypoints.verify import FidelitySettings, check_template

    args = custom_server.args
    applied = Path(args[args.index("--chat-template") + 1])
    assert applied.read_text() == CUSTOM
    assert any(
        "--chat-template" in note and "custom-alt@1, custom@1" in note for note in custom_server.notes()
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    template = run_chat_template(custom_run.run_dir, tokenizer)
    base_template = model_chat_template(tiny_base)
    prompts = _prompts()
    # The check means something: the base's template (what vLLM applied before) renders other ids.
    assert all(
        render_prompt(p, tokenizer, base_template) != render_prompt(p, tokenizer, template) for p in prompts
    )
    for model in ("custom", "custom-alt"):
        settings = FidelitySettings(
            run=str(custom_run.run_dir), endpoint=custom_server.url, model=model, api_key=API_KEY
        )
        result = check_template(settings, prompts, tokenizer, template)
        assert result.status == "passed" and result.prompts == len(prompts), result
        # and what it would have said without the fix: every prompt differs from the first token on
        result = check_template(settings, prompts, tokenizer, base_template)
        assert result.status == "failed" and result.mismatched == len(prompts), result


def _load(server, name):
    body = {"lora_name": name, "lora_path": f"{server.config.registry}/{name}"}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.post(f"{server.url}/load_lora_adapter", json=body, headers=headers, timeout=60)


def test_hot_loading_refuses_an_adapter_of_another_template(custom_server, tiny_base, tmp_path):
    root = Path(custom_server.config.registry)
    _plain_adapter(tiny_base, root / "plain")
    _custom_adapter(tiny_base, root / "hot", seed=4)
    client = openai.OpenAI(base_url=custom_server.url, api_key=API_KEY, max_retries=0)
    messages = _prompts(1)[0]
    try:
        refused = _load(custom_server, "plain")
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert "chat template" in error["message"] and "one chat template per server" in error["message"]
        assert error["code"] == 400 and error["type"] == "BadRequestError"  # as vLLM types a 400
        with pytest.raises(openai.NotFoundError):  # nor does the first request that names it load it
            client.chat.completions.create(model="plain", messages=messages, max_tokens=4)
        loaded = _load(custom_server, "hot")  # the server's own template: accepted
        assert loaded.status_code == 200, loaded.text
        assert client.chat.completions.create(model="hot", messages=messages, max_tokens=4).choices
    finally:
        shutil.rmtree(root / "plain")
        shutil.rmtree(root / "hot")
    unload = httpx.post(
        f"{custom_server.url}/unload_lora_adapter",
        json={"lora_name": "hot"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert unload.status_code == 200, unload.text


def test_serve_refuses_adapters_of_different_templates_before_vllm_starts(custom_run, tiny_base, tmp_path):
    plain = _plain_adapter(tiny_base, tmp_path / "plain")
    command = [
        *CLI,
        "serve",
        "--base",
        str(tiny_base),
        "--adapter",
        f"custom={custom_run.adapter_dir}",
        "--adapter",
        f"plain={plain}",
        "--port",
        str(free_port()),
        "--log-file",
        str(tmp_path / "vllm.log"),
    ]
    cli = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=300)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "different chat templates" in cli.stderr and "vLLM applies one template per server" in cli.stderr
    assert "custom" in cli.stderr and "(the base model's own): plain" in cli.stderr
    assert "tuneship export" in cli.stderr and "Traceback" not in cli.stderr
    assert "Starting vLLM" not in cli.stdout and not (tmp_path / "vllm.log").exists()


def test_a_chat_template_given_by_hand_must_match_the_adapters(custom_run, tiny_base, tmp_path):
    from tuneship.serve.server import ServeConfig, VLLMServer

    (tmp_path / "other.jinja").write_text(OTHER)
    adapters = {"custom": str(custom_run.adapter_dir)}
    given = ServeConfig(
        base=str(tiny_base), adapters=adapters, extra_args=["--chat-template", str(tmp_path / "other.jinja")]
    )
    with pytest.raises(TuneshipError, match="not the --chat-template given"):
        VLLMServer(given)
    (tmp_path / "same.jinja").write_text(CUSTOM)
    server = VLLMServer(
        ServeConfig(
            base=str(tiny_base), adapters=adapters, extra_args=[f"--chat-template={tmp_path / 'same.jinja'}"]
        )
    )
    assert server.args.count("--chat-template") == 0 and server.chat_template.file is None


def test_the_container_gets_the_template_at_a_mounted_path(custom_run, tiny_base):
    from tuneship.serve.container import TEMPLATE_MOUNT, container_spec
    from tuneship.serve.server import ServeConfig, VLLMServer

    config = ServeConfig(base=str(tiny_base), adapters={"custom": str(custom_run.adapter_dir)}, port=8124)
    spec = container_spec(VLLMServer(config))
    template = str((custom_run.adapter_dir / CHAT_TEMPLATE).resolve())
    assert spec.mounts[template] == {"bind": TEMPLATE_MOUNT, "mode": "ro"}
    assert spec.command[spec.command.index("--chat-template") + 1] == TEMPLATE_MOUNT
    assert all(template not in arg for arg in spec.command)
