"""Training defaults chosen from measurement (README "Training defaults"): the learning rate by
method, epochs from the row count, gradient checkpointing for QLoRA; and the service's jobs,
which take the same defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneship.entrypoints.cli import cli
from tuneship.entrypoints.service.plan import train_config
from tuneship.train.config import TrainConfig, auto_epochs


@pytest.mark.parametrize(
    ("method", "rate"),
    [("lora", 1e-3), ("qlora", 1e-3), ("dora", 1e-3), ("full", 2e-4), ("prompt-tuning", 2e-4), ("dpo", 2e-4)],
)
def test_learning_rate_defaults_by_method_and_a_set_one_wins(method, rate):
    assert TrainConfig(data="d.jsonl", method=method).peak_learning_rate == rate
    assert TrainConfig(data="d.jsonl", method=method, learning_rate=3e-5).peak_learning_rate == 3e-5


def test_qlora_recomputes_activations_unless_told_not_to():
    assert TrainConfig(data="d.jsonl", method="qlora").recomputes_activations
    assert not TrainConfig(
        data="d.jsonl", method="qlora", gradient_checkpointing=False
    ).recomputes_activations
    assert not TrainConfig(data="d.jsonl").recomputes_activations
    assert TrainConfig(data="d.jsonl", gradient_checkpointing=True).recomputes_activations


def test_epochs_auto_is_openais_rule_and_a_number_is_kept():
    assert [auto_epochs(n) for n in (1, 10, 20, 34, 96, 8000, 20_000)] == [25, 10, 5, 3, 3, 3, 1]
    assert TrainConfig(data="d.jsonl").epochs_for(20) == 5
    assert TrainConfig(data="d.jsonl", epochs="1.5").epochs_for(20) == 1.5  # flags arrive as text


def test_a_bad_epochs_value_is_refused_with_the_choices(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d.jsonl"), "--epochs", "lots"])
    assert result.exit_code != 0 and "epochs" in result.output and "auto" in result.output
    assert "Traceback" not in result.output


def test_service_jobs_take_the_methods_learning_rate_times_the_multiplier(tmp_path: Path):
    defaults = TrainConfig(data="unset")
    settings = dict(examples=40, job_dir=tmp_path, seed=1, data=tmp_path / "d.jsonl", eval_data=None)
    hyper = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0, "beta": 0.1}
    sft = train_config(defaults, {"type": "supervised", "hyperparameters": hyper}, **settings)
    dpo = train_config(defaults, {"type": "dpo", "hyperparameters": hyper}, **settings)
    assert (sft.method, sft.learning_rate) == ("lora", 2e-3)
    assert (dpo.method, dpo.learning_rate) == ("dpo", 4e-4)
    chosen = TrainConfig(data="unset", learning_rate=1e-4)  # the service's own setting wins
    assert train_config(chosen, {"type": "dpo", "hyperparameters": hyper}, **settings).learning_rate == 2e-4
