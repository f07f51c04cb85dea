"""The model card (``README.md``) written into every merged export: where the model came from."""

from __future__ import annotations

from typing import Any


def model_card(name: str, lineage: dict, run: dict | None, parity: dict) -> str:
    """Markdown: base, data, method and settings, training metrics, parity, lineage."""
    base = lineage.get("base_model", {})
    data = lineage.get("data", {})
    config = (run or {}).get("config", {})
    result = (run or {}).get("result", {})
    base_name = base.get("name", "?")
    rows = [
        ("Base model", f"{base_name} (weights sha256 `{_short(base.get('weights_sha256'))}`)"),
        ("Method", lineage.get("method", "?")),
        (
            "Data",
            f"`{data.get('path', '?')}` ({data.get('format', '?')}, {data.get('examples', '?')} examples, "
            f"sha256 `{_short(data.get('sha256'))}`)",
        ),
        ("Chat template sha256", f"`{_short(lineage.get('chat_template_sha256'))}`"),
        ("Loss on", lineage.get("loss_on", "?")),
        ("Seed", lineage.get("seed", "?")),
        ("Saved dtype", lineage.get("dtype", "?")),
    ]
    settings = ("lora_r", "lora_alpha", "target_modules", "learning_rate", "max_steps", "batch_size")
    for key in (*settings, "max_length"):
        if key in config:
            rows.append((key, config[key]))
    for key in ("steps", "train_loss", "eval_loss", "num_tokens"):
        if result.get(key) is not None:
            rows.append((key.replace("_", " "), result[key]))
    lines = [
        f"# {name}",
        "",
        f"A merged model made by tuneship: the adapter is folded into the weights of {base_name}; "
        "load it like any Hugging Face causal LM or serve it with vLLM.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {_cell(v)} |" for k, v in rows],
        "",
        "## Parity with base + adapter",
        "",
        f"On {parity.get('prompts')} fixed prompts ({parity.get('positions')} positions) the merged weights "
        f"give a max |logit difference| of {parity.get('max_abs_logit_diff')} against PEFT's base + adapter "
        f"in fp32 and the same greedy next token at {parity.get('greedy_agreement', 0):.1%} of positions "
        f"(tolerance {parity.get('tolerance')}, min agreement {parity.get('min_agreement')}). "
        "See `parity.json`.",
        "",
        "## Files",
        "",
        "`manifest.json` holds the sha256 of every file; `tuneship export verify DIR` re-checks them. "
        "`tuneship.json` is the full lineage record (library versions included).",
        "",
    ]
    return "\n".join(lines)


def _short(digest: Any) -> str:
    return str(digest or "?")[:16]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
