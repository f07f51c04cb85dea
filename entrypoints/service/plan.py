"""From a job's request to the training run: hyperparameters resolved, names, the run's settings file.

``"auto"`` is resolved as documented here and reported on the job: ``n_epochs`` by OpenAI's
published rule (3 passes, more for a small file so that about 100 examples are seen, fewer for a
huge one), ``batch_size`` the service's (capped at the examples), ``learning_rate_multiplier``
1.0 (of the service's learning rate: its setting, else the method's default), ``beta`` the service's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneship.artifacts import write_yaml
from tuneship.config import load_config
from tuneship.train.config import TrainConfig, auto_epochs

TRAIN_FILE = "train.yaml"  # the run's settings, as `tuneship train --config` reads them
RUN_NAME = "run"  # the run directory inside a job's directory
CHECKPOINTS_PER_JOB = 3  # about this many checkpoints (OpenAI keeps the last three epochs')


def service_defaults(settings: dict[str, str], base: str) -> TrainConfig:
    """The service's training settings on top of training's own defaults (checked; one clear line)."""
    return load_config(TrainConfig, data="unset", base=base, **settings)


def resolve(method: dict[str, Any], examples: int, defaults: TrainConfig) -> dict[str, Any]:
    """``method`` with every ``"auto"`` replaced by the value the job trains with."""
    asked = method["hyperparameters"]
    picks = {
        "n_epochs": auto_epochs(examples),
        "batch_size": max(1, min(defaults.batch_size, examples)),
        "learning_rate_multiplier": 1.0,
        "beta": defaults.beta,
    }
    resolved = {key: picks[key] if asked.get(key, "auto") == "auto" else asked[key] for key in picks}
    return {"type": method["type"], "hyperparameters": resolved}


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:BASE:SUFFIX:JOBID`` (an empty suffix stays an empty field, as in OpenAI's names)."""
    return f"ft:{base}:{suffix or ''}:{job_id}"


def checkpoint_name(fine_tuned: str, step: int) -> str:
    """A checkpoint's model name: ``ft:BASE:SUFFIX:JOBID:ckpt-step-N``."""
    return f"{fine_tuned}:ckpt-step-{step}"


def train_config(
    defaults: TrainConfig,
    resolved: dict[str, Any],
    examples: int,
    job_dir: Path,
    seed: int,
    data: Path,
    eval_data: Path | None,
) -> TrainConfig:
    """The settings of a job's run: the service's defaults, the resolved hyperparameters, the job's files."""
    h = resolved["hyperparameters"]
    method = "dpo" if resolved["type"] == "dpo" else defaults.method
    rate = defaults.model_copy(update={"method": method}).peak_learning_rate  # set, else the method's
    steps = math.ceil(examples / (h["batch_size"] * defaults.grad_accum)) * h["n_epochs"]
    every = max(1, math.ceil(steps / CHECKPOINTS_PER_JOB))
    settings = {
        **defaults.model_dump(mode="json"),
        "data": str(data),
        "eval_data": str(eval_data) if eval_data else "",
        "runs_dir": str(job_dir),
        "name": RUN_NAME,
        "seed": seed,
        "epochs": h["n_epochs"],
        "max_steps": -1,
        "batch_size": h["batch_size"],
        "learning_rate": rate * h["learning_rate_multiplier"],
        "method": method,
        "beta": h["beta"],
        "save_steps": every,
        "eval_steps": every,
    }
    return TrainConfig.model_validate(settings)


def write_train_config(config: TrainConfig, job_dir: Path) -> Path:
    """Write the run's settings where ``tuneship train --config`` reads them."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / TRAIN_FILE
    write_yaml(path, config.model_dump(mode="json"))
    return path
