"""The adapter contract refuses before vLLM is asked: `adapters check`, `adapters add`, `serve`
and `export` on adapter directories as other tools leave them (each made from a real adapter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import bad_adapters, make_adapter, make_tiny_llama
from safetensors import safe_open

from tuneship.adapters import check_adapter
from tuneship.entrypoints.cli import cli
from tuneship.errors import AdapterRefusedError, ArtifactError, TuneshipError

# kind -> (a fragment of the reason, a fragment of what to do). None: vLLM can serve it as it is.
REFUSED = {
    "token-rows": ("trained token rows (model.embed_tokens", "export a merged model"),
    "zero3": ("tensors are empty (shape [0], e.g. model.layers.0.", "DeepSpeed ZeRO-3"),
    "rank-mismatch": ("lora_A rank 8, lora_B rank 8, config r=16", "save the adapter again"),
    "renamed": ("match no module of", "serve or merge it with the base model it was trained for"),
    "other-base": ("do not fit the shapes of", "serve or merge it with the base model it was trained for"),
    "added-tokens": ("added tokens: model.embed_tokens.base_layer.weight has", "export a merged model"),
}
REPAIRED = {
    "compiled": "tensor names carry torch.compile's '_orig_mod.' prefix, stripped when registered",
    "bin-only": "only adapter_model.bin (a pickle; tuneship serves safetensors), converted",
}


@pytest.fixture(scope="module")
def good(tiny_base, tmp_path_factory) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("good") / "adapter", seed=3)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """A real adapter of a base of hidden size 256 (the tiny base has 128)."""
    wide = make_tiny_llama(tmp_path_factory.mktemp("wide") / "wide-llama", hidden_size=256)
    return make_adapter(wide, tmp_path_factory.mktemp("foreign") / "adapter")


@pytest.fixture(scope="module")
def kinds(good, foreign, tiny_base, tmp_path_factory) -> dict[str, Path]:
    return bad_adapters(good, foreign, tiny_base, tmp_path_factory.mktemp("kinds"))


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_check_add_and_serve_refuse_with_the_reason(kind, kinds, tiny_base, tmp_path):
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    path = kinds[kind]
    reason, todo = REFUSED[kind]
    checked = _run("adapters", "check", str(path), "--base", str(tiny_base))
    assert checked.exit_code == 1 and f"Adapter: {path}" in checked.output, checked.output
    assert (
        "vLLM cannot serve it as LoRA" in checked.output
        and reason in checked.output
        and todo in checked.output
    )

    registry = str(tmp_path / "registry")
    added = _run("adapters", "add", "x", str(path), "--registry", registry, "--base", str(tiny_base))
    assert added.exit_code == 1 and "Traceback" not in added.output, added.output
    assert f"Error: {path} cannot be served as LoRA: " in added.output and reason in added.output
    assert not (tmp_path / "registry" / "x").exists() and not (tmp_path / "registry" / "x@1").exists()

    with pytest.raises(AdapterRefusedError) as refused:
        VLLMServer(ServeConfig(base=str(tiny_base), adapters={kind: str(path)}))
    assert f"adapter {kind} ({path}): " in str(refused.value) and reason in str(refused.value)


def test_an_adapter_of_another_width_is_refused_through_its_lineage_too(foreign, tiny_base):
    """With the lineage naming the wide base: refused on the tiny base for hash and for shapes."""
    report = check_adapter(foreign, base_sha256="0" * 64, base=tiny_base)
    assert any("trained on a different base model" in p for p in report.problems)
    assert any("do not fit the shapes of" in p and "(hidden size 128)" in p for p in report.broken)
    assert report.recommendation.startswith("serve or merge it with the base model it was trained for")
    assert check_adapter(foreign).ok  # against its own base (its lineage names it): servable


@pytest.mark.parametrize("kind", sorted(REPAIRED))
def test_add_repairs_exactly_and_says_so_while_serve_refuses_the_raw_directory(
    kind, kinds, good, tiny_base, tmp_path
):
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    path = kinds[kind]
    checked = _run("adapters", "check", str(path))
    assert checked.exit_code == 1 and REPAIRED[kind] in checked.output, checked.output
    assert "tuneship adapters add repairs it" in checked.output

    with pytest.raises(AdapterRefusedError) as refused:
        VLLMServer(ServeConfig(base=str(tiny_base), adapters={kind: str(path)}))
    assert f"adapter {kind} ({path}): " in str(refused.value) and REPAIRED[kind] in str(refused.value)
    assert f"tuneship adapters add {kind} {path}" in str(refused.value)

    registry = tmp_path / "registry"
    added = _run("adapters", "add", kind, str(path), "--registry", str(registry))
    assert added.exit_code == 0 and f"Repaired: {REPAIRED[kind]}" in added.output, added.output
    assert f"Registered {kind}@1: " in added.output and f"alias {kind} -> {kind}@1 (new)" in added.output
    entry = registry / f"{kind}@1"
    assert sorted(p.name for p in entry.glob("adapter_model.*")) == ["adapter_model.safetensors"]
    with (
        safe_open(str(entry / "adapter_model.safetensors"), "pt") as f,
        safe_open(str(good / "adapter_model.safetensors"), "pt") as g,
    ):
        assert set(f.keys()) == set(g.keys())  # the names vLLM matches to the base's modules
    assert check_adapter(entry, base=tiny_base).ok
    assert VLLMServer(ServeConfig(base=str(tiny_base), registry=str(registry))).adapters == {
        f"{kind}@1": str(entry)
    }  # accepted now, served as the version the alias names
    again = _run("adapters", "add", kind, str(path), "--registry", str(registry))  # repaired the same
    assert again.exit_code == 0 and f"unchanged: {kind}@1 has this content" in again.output, again.output
    assert sorted(p.name for p in registry.iterdir() if not p.name.startswith(".")) == [
        "aliases.json",
        f"{kind}@1",
    ]


def test_a_no_op_adapter_is_flagged_not_refused(kinds, tiny_base, tmp_path):
    checked = _run("adapters", "check", str(kinds["no-op"]))
    assert checked.exit_code == 0 and "vLLM can serve it" in checked.output
    assert "all 14 lora_B factors are zero: the adapter is untrained" in checked.output
    added = _run("adapters", "add", "noop", str(kinds["no-op"]), "--registry", str(tmp_path))
    assert added.exit_code == 0 and "Note: all 14 lora_B factors are zero" in added.output


def test_weights_missing_or_unreadable_are_named(kinds):
    report = check_adapter(kinds["no-weights"])
    assert report.broken == [
        f"no adapter weights (adapter_model.safetensors or adapter_model.bin) in {kinds['no-weights']}"
    ]
    checked = _run("adapters", "check", str(kinds["no-weights"]))
    assert checked.exit_code == 1 and "save the adapter again from training" in checked.output


def test_names_of_served_models_are_refused(good, tiny_base, tmp_path):
    from tuneship.models import resolve_base
    from tuneship.serve.config import ServeConfig
    from tuneship.serve.server import VLLMServer

    base_name = resolve_base(str(tiny_base)).name
    added = _run("adapters", "add", base_name, str(good), "--registry", str(tmp_path / "r"))
    assert added.exit_code == 1 and f"'{base_name}' is the name of the adapter's base model" in added.output
    with pytest.raises(AdapterRefusedError) as refused:
        VLLMServer(ServeConfig(base=str(tiny_base), served_name="tickets", adapters={"tickets": str(good)}))
    assert f"adapter tickets ({good}): 'tickets' is the name this server serves the base model under" in str(
        refused.value
    )
    assert _run("adapters", "add", "one", str(good), "--registry", str(tmp_path / "r")).exit_code == 0
    for taken, reason in (("one", "and is an alias in the registry"), ("one@1", "and in the registry")):
        with pytest.raises(TuneshipError, match=f"'{taken}' is given by --adapter {reason}"):
            VLLMServer(
                ServeConfig(base=str(tiny_base), registry=str(tmp_path / "r"), adapters={taken: str(good)})
            )


def test_export_refuses_keys_that_do_not_load_instead_of_writing_the_base(kinds, good, tmp_path):
    from tuneship.export.merge import export_merged

    with pytest.raises(ArtifactError) as compiled:
        export_merged(kinds["compiled"], tmp_path / "a", dtype="fp32")
    message = str(compiled.value)
    assert f"{kinds['compiled']}: missing adapter keys: 28 of the 28 tensors" in message
    assert "'_orig_mod.' prefix" in message and "tuneship adapters add" in message

    with pytest.raises(ArtifactError, match=r"cannot merge: 28 of 28 tensors are empty \(shape \[0\]"):
        export_merged(kinds["zero3"], tmp_path / "b", dtype="fp32")

    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    from safetensors.torch import load_file, save_file

    tensors = load_file(partial / "adapter_model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "v_proj" not in k}, str(partial / "adapter_model.safetensors")
    )
    with pytest.raises(ArtifactError) as missing:
        export_merged(partial, tmp_path / "c", dtype="fp32")
    assert (
        "missing adapter keys: 4 of the 28 tensors the config asks for are not in adapter_model.safetensors"
        in str(missing.value)
    )
    assert "v_proj" in str(missing.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]  # nothing written

    with pytest.raises(ArtifactError) as added:  # the resized embedding does not load on the base
        export_merged(kinds["added-tokens"], tmp_path / "d", dtype="fp32")
    assert "adapter keys that do not load: 1 tensor(s) in adapter_model.safetensors" in str(added.value)
    assert "the adapter check says: added tokens: model.embed_tokens.base_layer.weight has" in str(
        added.value
    )
    assert export_merged(kinds["bin-only"], tmp_path / "e", dtype="fp32").parity.passed  # PEFT reads .bin


def test_reference_model_refuses_an_adapter_file_that_lacks_tensors(good, tiny_base, tmp_path):
    """verify's base + adapter: PEFT fills the adapter's tensors from its file (no random init
    first); one the file lacks would stay empty, so it is refused with the reason."""
    from safetensors.torch import load_file, save_file

    from tuneship.models import load_peft, resolve_base

    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    tensors = load_file(partial / "adapter_model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "v_proj" not in k}, str(partial / "adapter_model.safetensors")
    )
    with pytest.raises(
        ArtifactError, match=r"4 tensor\(s\) the adapter's config asks for are not in its weights"
    ):
        load_peft(resolve_base(str(tiny_base)), partial)
    assert load_peft(resolve_base(str(tiny_base)), good).active_adapter == "default"


def test_config_rank_pattern_is_honoured(good, tmp_path):
    config = json.loads((good / "adapter_config.json").read_text())
    patterned = tmp_path / "patterned"
    shutil.copytree(good, patterned)
    (patterned / "adapter_config.json").write_text(
        json.dumps({**config, "r": 4, "rank_pattern": {".*_proj": 8}})
    )
    assert check_adapter(patterned).broken == []
    (patterned / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"q_proj": 4}}))
    assert "2 of 14 modules have factors of another rank" in check_adapter(patterned).broken[0]
