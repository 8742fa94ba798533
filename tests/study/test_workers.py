"""Two worker processes on one SQLite study: every trial number runs once, none is lost or left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

from bitalloc.study.definition import load_definition
from bitalloc.study.runner import open_study
from tests.study.conftest import write_tiny


def test_two_workers_share_one_study(tmp_path: Path) -> None:
    definition = write_tiny(tmp_path, storage=f"sqlite:///{tmp_path / 'shared.db'}")
    d = load_definition(definition)
    open_study(d)  # create it (and enqueue the baselines) once, as `bitalloc study run` would
    cmd = [sys.executable, "-c", "from bitalloc.cli import main; main()", "study", "worker", str(definition)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([*cmd, "--n-trials", "2"], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()[-2000:]

    trials = open_study(d).get_trials()
    assert sorted(t.number for t in trials) == list(range(4))  # nothing lost, nothing counted twice
    finished = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in finished for t in trials)
    by_worker: dict[str, list[int]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    assert len(by_worker) == 2 and sorted(len(v) for v in by_worker.values()) == [2, 2]
    # the two enqueued baselines were each taken by exactly one worker
    assert sum("fixed_params" in t.system_attrs for t in trials) == 2
