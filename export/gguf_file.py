"""Write a merged model as one GGUF file with the ``gguf`` package's writer and tensor-name maps.

The layout follows llama.cpp's ``convert_hf_to_gguf.py``: the architecture's hyperparameters under
``{arch}.*``, the tokenizer under ``tokenizer.ggml.*`` (:mod:`tuneship.export.gguf_vocab`), 1-D
tensors (norms, biases) in F32 and 2-D weights in the chosen type. For Llama, q_proj/k_proj rows
are permuted as llama.cpp's ``LlamaModel.permute`` does (its rotary embedding pairs neighbouring
dimensions, transformers' pairs the two halves); readers such as transformers undo it on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from tuneship.errors import ArtifactError

Quant = Literal["f16", "bf16", "q8_0"]
QUANTS: tuple[str, ...] = get_args(Quant)
# Asked for in issues, not written: gguf 0.19 has no numpy quantizer for the K-quants (only a
# dequantizer); llama.cpp's own `llama-quantize` turns an f16 export into them.
NOT_WRITTEN = {"q4_k_m": "run llama.cpp's llama-quantize on an f16 export"}
# transformers model_type -> the gguf package's architecture
ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}


def check_supported(config: Any, quant: str) -> None:
    """Raise ArtifactError naming what is supported when the model or ``quant`` cannot be written."""
    if quant not in QUANTS:
        hint = f" ({NOT_WRITTEN[quant]})" if quant in NOT_WRITTEN else ""
        raise ArtifactError(
            f"GGUF quantization {quant!r} is not supported{hint}; supported: {', '.join(QUANTS)}"
        )
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ArtifactError(
            f"GGUF export does not support the {model_type!r} architecture; supported: {', '.join(ARCHS)}"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ArtifactError(f"GGUF export does not support rope scaling ({rope.get('rope_type')}) yet")


def _types(quant: Quant) -> tuple[Any, int]:
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {
        "f16": (q.F16, f.MOSTLY_F16),
        "bf16": (q.BF16, f.MOSTLY_BF16),
        "q8_0": (q.Q8_0, f.MOSTLY_Q8_0),
    }[quant]


def permute(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's ``LlamaModel.permute`` of q_proj (``n_head``) / k_proj (``n_head_kv``) rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_hyperparameters(writer: Any, config: Any, file_type: int) -> None:
    heads = config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(int(file_type))
    if config.model_type == "llama":
        writer.add_vocab_size(config.vocab_size)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        writer.add_rope_dimension_count(head_dim)


def _tensors(model: Any, arch: Any) -> list[tuple[str, Any]]:
    """(GGUF name, fp32 numpy array) of every weight, q/k permuted for Llama."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ArtifactError(f"GGUF export: no GGUF name for tensor {hf_name} ({config.model_type})")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if config.model_type == "llama" and hf_name.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_attention_heads)
        elif config.model_type == "llama" and hf_name.endswith("k_proj.weight"):
            data = permute(data, config.num_attention_heads, config.num_key_value_heads)
        out.append((name, data))
    return out


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    quant: Quant,
    chat_template: str,
    end_of_turn: int | None,
    name: str,
) -> None:
    """Write ``model`` (merged, any dtype) and its tokenizer to ``path`` in ``quant``.

    Raises ArtifactError for an unsupported architecture or type (before anything is written).
    """
    import gguf

    from tuneship.export.gguf_vocab import add_vocab

    config = model.config
    check_supported(config, quant)
    arch = getattr(gguf.MODEL_ARCH, ARCHS[config.model_type])
    qtype, file_type = _types(quant)
    tensors = _tensors(model, arch)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, config, file_type)
    add_vocab(writer, tokenizer, config.vocab_size, chat_template, end_of_turn)
    for tensor_name, data in tensors:
        if data.ndim == 1:  # norms and biases stay F32, as llama.cpp keeps them
            kind = gguf.GGMLQuantizationType.F32
        elif data.shape[-1] % block:  # rows that do not fill Q8_0 blocks fall back to F16 (llama.cpp)
            kind = gguf.GGMLQuantizationType.F16
        else:
            kind = qtype
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
