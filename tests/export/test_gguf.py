import json
import shutil
import subprocess
import sys

import pytest
from helpers import make_adapter

from tuneship.errors import ArtifactError
from tuneship.export.gguf_export import export_gguf, verify_gguf_export
from tuneship.export.gguf_file import check_supported
from tuneship.export.gguf_parity import GgufParity


def _tuneship(*args):
    return subprocess.run(
        [sys.executable, "-m", "tuneship.entrypoints.cli", *args], capture_output=True, text=True
    )


def _field(reader, key):
    field = reader.get_field(key)
    return None if field is None else field.contents()


@pytest.fixture(scope="module")
def gguf_exports(tiny_run, tmp_path_factory):
    """The trained tiny run exported as f16 and as q8_0 GGUF."""
    root = tmp_path_factory.mktemp("gguf")
    return {q: export_gguf(tiny_run.run_dir, root / f"tiny-{q}", quant=q) for q in ("f16", "q8_0")}


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_reloaded_by_transformers_matches_base_plus_adapter(gguf_exports, quant):
    result = gguf_exports[quant]
    assert result.file.is_file() and result.file.name == f"tiny-{quant}-{quant}.gguf"
    parity = GgufParity.model_validate_json((result.out / "parity.json").read_text())
    assert parity == result.parity and parity.passed and parity.prompt_ids_match
    assert parity.quant == quant and parity.positions > parity.prompts == 8
    assert parity.max_abs_logit_diff <= parity.tolerance
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert {result.file.name, "Modelfile", "parity.json", "tuneship.json"} <= set(manifest["files"])
    assert manifest["lineage"]["format"] == "gguf" and manifest["lineage"]["dtype"] == quant
    assert sorted(p.name for p in result.out.parent.iterdir() if p.name.startswith(".")) == []


def test_template_and_stop_tokens_read_back_from_the_file(gguf_exports, tiny_run):
    import gguf

    reader = gguf.GGUFReader(gguf_exports["q8_0"].file)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.chat_template") == (tiny_run.run_dir / "chat_template.jinja").read_text()
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens[_field(reader, "tokenizer.ggml.eot_token_id")] == "<|im_end|>"
    assert (
        _field(reader, "tokenizer.ggml.eos_token_id") == 2
        and _field(reader, "tokenizer.ggml.model") == "gpt2"
    )
    types = {t.tensor_type.name for t in reader.tensors}
    assert types == {"Q8_0", "F32"}, "2-D weights in Q8_0, norms in F32"
    modelfile = (gguf_exports["q8_0"].out / "Modelfile").read_text()
    assert f"FROM ./{gguf_exports['q8_0'].file.name}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "{{ .Content }}<|im_end|>" in modelfile
    assert "# Base model: tiny-llama" in modelfile and "# Training data:" in modelfile


def test_llama_q_and_k_rows_are_permuted_as_llama_cpp_does(gguf_exports, tiny_export):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from tuneship.export.gguf_file import permute

    reader = gguf.GGUFReader(gguf_exports["f16"].file)
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    written = np.asarray(q.data, dtype=np.float32).reshape(q.shape[::-1].tolist())
    merged = load_file(str(tiny_export.out / "model.safetensors"))  # the same merge, saved in fp32
    original = merged["model.layers.0.self_attn.q_proj.weight"]
    assert np.allclose(written, permute(original, 4, 4), atol=2e-3)
    assert not np.allclose(written, original, atol=2e-3)


def test_independent_check_refuses_q_and_k_rows_left_unpermuted(tiny_run, tmp_path, monkeypatch):
    import tuneship.export.gguf_file as gguf_file

    monkeypatch.setattr(gguf_file, "permute", lambda weights, *heads: weights)  # the classic layout bug
    with pytest.raises(ArtifactError, match="the GGUF file does not match base \\+ adapter"):
        export_gguf(tiny_run.run_dir, tmp_path / "out", quant="f16")
    assert list(tmp_path.iterdir()) == []


def test_verify_passes_then_names_a_tampered_gguf(gguf_exports, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(gguf_exports["f16"].out, copy)
    assert verify_gguf_export(copy, load=False).ok
    ok = _tuneship("export", "verify", str(copy))  # hashes, then transformers loads the GGUF
    assert ok.returncode == 0 and "all 4 files match manifest.json; model and tokenizer load" in ok.stdout
    weights = copy / gguf_exports["f16"].file.name
    data = bytearray(weights.read_bytes())
    data[len(data) - 1000] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = _tuneship("export", "verify", str(copy))
    assert bad.returncode == 1 and f"changed: {weights.name}" in bad.stderr and "Traceback" not in bad.stderr


def test_unsupported_type_and_architecture_are_refused(tiny_run, tmp_path):
    from transformers import GPT2Config, LlamaConfig

    out = tmp_path / "q4"
    cli = _tuneship(
        "export", str(tiny_run.run_dir), "--format", "gguf", "--quant", "q4_k_m", "--out", str(out)
    )
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines() == [
        "Error: GGUF quantization 'q4_k_m' is not supported (run llama.cpp's llama-quantize on an f16 "
        "export); supported: f16, bf16, q8_0"
    ]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(
        ArtifactError, match="does not support the 'gpt2' architecture; supported: llama, qwen2"
    ):
        check_supported(GPT2Config(), "f16")
    with pytest.raises(ArtifactError, match="rope scaling"):
        check_supported(LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0}), "f16")


def test_failed_check_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import tuneship.export.gguf_export as gguf_export

    def failing(*args):
        return GgufParity(
            quant="f16", prompts=8, prompt_ids_match=True, positions=80, max_abs_logit_diff=9.0,
            greedy_agreement=0.1, continuation_agreement=0.0, tolerance=0.25, min_agreement=0.97,
            min_continuation=0.75, passed=False,
        )  # fmt: skip

    monkeypatch.setattr(gguf_export, "check_gguf", failing)
    with pytest.raises(ArtifactError, match="does not match base \\+ adapter"):
        export_gguf(tiny_run.run_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_qwen2_from_config_round_trips_through_transformers(default_base, tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tuneship.chat import end_of_turn_id
    from tuneship.export.gguf_file import write_gguf
    from tuneship.export.gguf_parity import load_gguf

    tokenizer = AutoTokenizer.from_pretrained(default_base.path)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:  # non-zero q/k/v biases, so their layout is checked too
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    name = "qwen2-f16.gguf"
    write_gguf(
        model, tokenizer, tmp_path / name, "f16", tokenizer.chat_template, end_of_turn_id(tokenizer), "q"
    )
    reloaded, reread = load_gguf(tmp_path, name)
    assert reloaded.config.model_type == "qwen2" and not reloaded.config.tie_word_embeddings
    ids = torch.tensor([reread("Hello, world! 123")["input_ids"]])
    assert ids[0].tolist() == tokenizer("Hello, world! 123")["input_ids"]
    with torch.no_grad():
        diff = (reloaded(ids).logits - model(ids).logits).abs().max()
    assert float(diff) < 0.01


def test_default_model_with_adapter_exports_f16_gguf(default_base, tmp_path):
    adapter = make_adapter(default_base.path, tmp_path / "adapter", rank=8)
    result = export_gguf(adapter, tmp_path / "smollm2-gguf", quant="f16")
    assert result.parity.passed and result.parity.prompt_ids_match
    assert result.parity.greedy_agreement >= 0.97 and result.parity.continuation_agreement >= 0.75
