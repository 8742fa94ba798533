"""Run the tiny study in process on the 2-layer model: plans stored, infeasible pruned, resume, show."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from bitalloc.allocator.plan import Plan
from bitalloc.models.loading import LoadedModel
from bitalloc.study.cli import study_app
from bitalloc.study.definition import load_definition
from bitalloc.study.report import front_table, write_report
from bitalloc.study.runner import finished, open_study, run_study
from bitalloc.study.storage import load_plan
from tests.study.conftest import write_tiny


def test_run_resume_and_show(tiny_definition: Path, smollm2_small: LoadedModel) -> None:
    d = replace(load_definition(tiny_definition), n_trials=3)
    assert run_study(d, loaded=smollm2_small) == 3
    study = open_study(d)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]

    # baseline 0 pins the edge layers to 8 bits with a palette of 3 and 4 bits: pruned, reason kept
    assert trials[0].state is optuna.trial.TrialState.PRUNED
    assert "has no feasible candidate" in trials[0].user_attrs["pruned"]
    done = trials[1]
    assert done.state is optuna.trial.TrialState.COMPLETE and done.params["bits"] == "3,8"
    plan = load_plan(d.folder, done.user_attrs["plan_id"])
    assert isinstance(plan, Plan) and plan.model_hash == smollm2_small.model_hash
    assert done.values[1] == plan.model_bytes == done.user_attrs["bytes"]
    assert plan.bpw <= 4.0 and done.user_attrs["perplexity"] == done.values[0] > 1.0

    # resume: the study holds 3 finished trials, asking for 4 runs exactly 1 more and keeps the first 3
    assert run_study(replace(d, n_trials=4), loaded=smollm2_small) == 1
    study = open_study(d)
    assert finished(study) == 4
    assert study.get_trials()[1].values == done.values

    report = write_report(study, d)
    assert (d.folder / "front.png").stat().st_size > 1000
    front = front_table(study)
    assert not front.empty and front["bytes"].is_monotonic_increasing
    assert "## Pareto front" in report.read_text()

    shown = CliRunner().invoke(study_app, ["show", str(tiny_definition)])
    assert shown.exit_code == 0, shown.output
    assert "Pareto front" in shown.output and str(front["plan_id"].iloc[0]) in shown.output


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_dead_workers_trial_is_retried(tmp_path: Path, smollm2_small: LoadedModel) -> None:
    """A worker killed mid-trial leaves it RUNNING; the next run fails it and re-runs its parameters."""
    d = replace(load_definition(write_tiny(tmp_path, n_trials=1)), grace_s=1, baselines=())
    study = open_study(d)
    params = {"bits": "3,8", "pins": "none", "budget_bpw": 4.0}
    study.enqueue_trial(params)
    dead = study.ask()  # what the killed worker had started: RUNNING, one heartbeat, then silence
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    assert run_study(d, loaded=smollm2_small) == 1
    trials = open_study(d).get_trials()
    assert trials[0].number == dead.number and trials[0].state is optuna.trial.TrialState.FAIL
    retry = trials[1]
    assert retry.state is optuna.trial.TrialState.COMPLETE and retry.params == params
    assert retry.system_attrs["failed_trial"] == dead.number
