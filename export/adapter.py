"""Adapter-only export: a clean PEFT directory (config + safetensors + the chat template it was
trained with, nothing else).

    tuneship export runs/tickets --adapter-only --out exports/tickets-adapter

ready for ``vllm serve --lora-modules`` (with ``--chat-template DIR/chat_template.jinja``) or for
publishing. The adapter is checked first; an unreadable one is refused, and what vLLM would
refuse is reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneship.adapters import AdapterReport, adapter_chat_template, check_adapter
from tuneship.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHAT_TEMPLATE, atomic_dir
from tuneship.errors import ArtifactError
from tuneship.export.merge import find_adapter


def export_adapter(source: Path | str, out: Path | str, force: bool = False) -> AdapterReport:
    """Copy the adapter's config, weights (as safetensors) and chat template to ``out``.

    The template comes from the adapter directory, else from its run (older runs); an adapter
    that has none gets none. Returns the check report; raises ArtifactError for an unreadable adapter.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    adapter = find_adapter(source)
    report = check_adapter(adapter)
    if report.broken:
        raise ArtifactError(f"{adapter}: {'; '.join(report.broken)}")
    template = adapter_chat_template(adapter).file
    with atomic_dir(out, force=force) as tmp:
        shutil.copyfile(adapter / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
        if template is not None:
            shutil.copyfile(template, tmp / CHAT_TEMPLATE)
        if (adapter / ADAPTER_WEIGHTS).is_file():
            shutil.copyfile(adapter / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        else:  # an older PEFT pickle: convert, so nothing unsafe is published
            import torch
            from safetensors.torch import save_file

            state = torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / ADAPTER_WEIGHTS))
    return report
