"""The model card (``README.md``) written into every merged export: where the model came from.

A ``huggingface_hub.ModelCard`` whose front matter the Hub and other tools read as lineage
(``base_model``, ``library_name``, ``tags``), with the body rendered from the Jinja2 template
``export/templates/model_card.md.j2`` (package data; the web console can render it too).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from tuneship.export.parity import Parity
from tuneship.lineage import BaseIdentity, Lineage

TEMPLATE = "model_card.md.j2"
# Hub ids of bases whose local name is not one: the default base is built from the GGUF of this model.
HUB_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Training settings and results shown in the card, in this order (from the run's run.yaml).
SETTINGS = (
    "lora_r",
    "lora_alpha",
    "target_modules",
    "max_steps",
    "batch_size",
    "max_length",
)
RESULTS = ("learning_rate", "epochs", "steps", "train_loss", "eval_loss", "num_tokens")


def model_card(name: str, lineage: Lineage, run: dict | None, parity: Parity) -> Any:
    """The card of a merged export: a ``huggingface_hub.ModelCard`` (``card.save(path)`` writes it).

    ``lineage`` is the merged model's record, ``run`` the training run's ``run.yaml`` (None for an
    adapter that came without its run), ``parity`` the export's parity check.
    """
    from huggingface_hub import ModelCard, ModelCardData

    base = lineage.base_model or BaseIdentity(name="?", path="?", source="?", weights_sha256="?")
    config = (run or {}).get("config") or {}
    result = (run or {}).get("result") or {}
    rows = [(key, config[key]) for key in SETTINGS if key in config]
    rows += [(key.replace("_", " "), result[key]) for key in RESULTS if result.get(key) is not None]
    data = ModelCardData(
        base_model=hub_id(base),
        base_model_relation="finetune" if hub_id(base) else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["tuneship", *([lineage.method] if lineage.method else []), "merged"],
    )
    template = files("tuneship.export").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        data, template_str=template, name=name, base=base, lineage=lineage, rows=rows, parity=parity
    )


def hub_id(base: BaseIdentity) -> str | None:
    """The base's Hub model id for the front matter, or None for a local model the Hub cannot name."""
    if base.source == "hub":
        return base.name
    return HUB_IDS.get(base.name) if base.source != "local" else None
