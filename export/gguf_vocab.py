"""A byte-level BPE tokenizer (GPT-2 style: SmolLM2, Qwen2, Llama 3) as GGUF ``tokenizer.ggml.*`` metadata.

Tokens in id order, their types (control for special added tokens, user-defined for other added
tokens), the merges, the bos/eos/unk/padding ids, the end-of-turn id (``eot_token_id``, which
llama.cpp stops on besides eos) and the chat template the run trained with — the keys and layout
of llama.cpp's ``convert_hf_to_gguf.py``. ``tokenizer.ggml.pre`` names how text is split before
the merges; only splits both llama.cpp and transformers' GGUF reader know are written.
"""

from __future__ import annotations

import json
from typing import Any

from tuneship.errors import ArtifactError


def tokenizer_json(tokenizer: Any) -> dict:
    """The fast tokenizer's own JSON (model, pre-tokenizer, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ArtifactError("GGUF export needs a fast (tokenizers) tokenizer")
    return json.loads(backend.to_str())


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the tokenizer's split (``tokenizer.ggml.pre``); ArtifactError when unknown."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"  # GPT-2's split regex, as the default model's tokenizer has it
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    split = next((p for p in parts if p.get("type") == "Split"), None)
    if split is not None and split.get("pattern", {}).get("Regex") == PRETOKENIZE_REGEX:
        return "qwen2"
    raise ArtifactError(
        f"GGUF export supports byte-level BPE tokenizers with GPT-2's or Qwen2's split; this one "
        f"pre-tokenizes with {json.dumps(pre)[:200]}"
    )


def vocab_lists(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens by id (``[PADn]`` for unused ids up to the model's ``n_vocab``) and their types."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def add_vocab(writer: Any, tokenizer: Any, n_vocab: int, chat_template: str, end_of_turn: int | None) -> None:
    """Add the tokenizer, its special ids and ``chat_template`` to a ``gguf.GGUFWriter``."""
    spec = tokenizer_json(tokenizer)
    if spec.get("model", {}).get("type") != "BPE":
        raise ArtifactError("GGUF export supports byte-level BPE tokenizers only (tokenizer.ggml.model gpt2)")
    pre = pre_tokenizer_name(spec)
    tokens, types = vocab_lists(tokenizer, n_vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_eot_token_id, end_of_turn),
    ):
        if token_id is not None:
            setter(int(token_id))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)
