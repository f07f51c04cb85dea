"""The lineage record: where an artifact came from, written and read by this module only.

Every model or adapter directory tuneship writes holds ``tuneship.json``, and a run's
``run.yaml`` repeats it. Training writes it (kind ``adapter`` or ``full-model``), export
extends it (``merged-model``), the default-model builder writes a short one
(``base-model``). Export, serve, the registry and verify read it back through
:func:`read_lineage` instead of asking the user again, and refuse to combine things that
do not belong together (an adapter on another base, a template the server would not apply).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneship.artifacts import LINEAGE, read_json, write_json
from tuneship.errors import ArtifactError

Kind = Literal["base-model", "adapter", "full-model", "merged-model"]


class BaseIdentity(BaseModel):
    """The base model an artifact was made from."""

    name: str = Field(description="served/display name, e.g. SmolLM2-135M-Instruct or a hub id")
    path: str = Field(description="local directory the weights were read from")
    source: str = Field(description="'local', 'hub', or the package the default model was built from")
    weights_sha256: str = Field(description="hash over the base's safetensors files (artifacts.hash_dir)")


class DataRecord(BaseModel):
    """The training data file a run read."""

    path: str = Field(description="absolute path of the data file or datasets directory")
    sha256: str = Field(description="sha256 of the file (or hash_dir of a directory)")
    format: str = Field(description="detected or given data format")
    examples: int = Field(description="rows trained on")
    skipped: int = Field(0, description="invalid rows dropped with --skip-invalid")


class AdapterOrigin(BaseModel):
    """The adapter a run started from (``--init-adapter``: DPO on top of an SFT run)."""

    path: str = Field(description="the adapter directory read")
    sha256: str = Field(description="its content hash: config and weights (tuneship.adapters.adapter_hash)")
    method: str | None = Field(None, description="the method that trained it, from its own lineage")


class Lineage(BaseModel):
    """Typed ``tuneship.json``. Unknown keys from newer versions are kept, not dropped."""

    model_config = ConfigDict(extra="allow")

    kind: Kind = Field(description="what the directory holds")
    method: str | None = Field(
        None, description="training method (lora, qlora, dora, full, prompt-tuning, dpo)"
    )
    init_adapter: AdapterOrigin | None = Field(
        None, description="the adapter training started from (and DPO's reference); None: the base"
    )
    base_model: BaseIdentity | None = Field(None, description="the base it was trained on")
    data: DataRecord | None = Field(None, description="the training data")
    chat_template_sha256: str | None = Field(None, description="sha256 of the template examples used")
    loss_on: str | None = Field(None, description="'assistant' or 'all'")
    seed: int | None = Field(None, description="training seed")
    versions: dict[str, str] = Field(default_factory=dict, description="library versions at write time")
    # base-model records (the default model built from its GGUF file)
    source: str | None = Field(None, description="base-model: where the weights came from")
    weights_sha256: str | None = Field(None, description="base-model: hash of its own weights")
    # merged-model records (export)
    adapter: str | None = Field(None, description="merged-model: the adapter directory merged in")
    adapter_sha256: str | None = Field(None, description="merged-model: sha256 of the adapter weights")
    dtype: str | None = Field(None, description="merged-model: dtype of the saved weights")


def read_lineage(directory: Path | str) -> Lineage | None:
    """The lineage record in ``directory`` (None when it has none).

    Raises ArtifactError when the file exists but is not a valid record.
    """
    path = Path(directory) / LINEAGE
    if not path.is_file():
        return None
    try:
        return Lineage.model_validate(read_json(path))
    except ValidationError as e:
        raise ArtifactError(f"{path}: not a valid lineage record ({e.errors()[0]['msg']})") from None


def write_lineage(directory: Path | str, lineage: Lineage) -> None:
    """Write ``tuneship.json`` into ``directory``."""
    write_json(Path(directory) / LINEAGE, lineage.model_dump(mode="json", exclude_none=True))
