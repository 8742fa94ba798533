"""Two worker processes on one study (SQLite, and PostgreSQL when BITALLOC_TEST_POSTGRES_URL is set):
every trial number runs exactly once, none is lost or left running, each worker runs its share."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from bitalloc.errors import InvalidInput
from bitalloc.study.definition import load_definition
from bitalloc.study.runner import open_study
from bitalloc.study.storage import open_storage, storage_url
from tests.study.conftest import write_tiny

POSTGRES = os.environ.get("BITALLOC_TEST_POSTGRES_URL", "")


def _two_workers(tmp_path: Path, storage: str, name: str) -> None:
    definition = write_tiny(tmp_path, storage=storage, name=name)
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
    # every completed trial's plan file exists (workers share the study folder)
    for t in trials:
        if t.state is optuna.trial.TrialState.COMPLETE:
            assert (d.folder / "plans" / f"{t.user_attrs['plan_id']}.json").exists()


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    _two_workers(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", "tiny")


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: set BITALLOC_TEST_POSTGRES_URL to run")
def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    _two_workers(tmp_path, POSTGRES, f"tiny-{uuid.uuid4().hex[:8]}")  # a fresh study in a shared database


def test_storage_url_is_checked() -> None:
    assert storage_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(InvalidInput, match=r"neither sqlite:///PATH nor postgresql://"):
        storage_url("mysql://u@h/db")


def test_an_sqlite_transaction_holds_the_write_lock_from_its_first_read(tmp_path: Path) -> None:
    # the double-take race: without BEGIN IMMEDIATE, a transaction that has only read takes no lock, so
    # another worker could take the same waiting trial between its read and its update
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    first, second = open_storage(url, heartbeat=False), open_storage(url, heartbeat=False)
    optuna.create_study(storage=first, study_name="locks")
    with first.engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SELECT count(*) FROM trials").fetchall()
        raw = second.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA busy_timeout = 50")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                raw.driver_connection.execute("BEGIN IMMEDIATE")
        finally:
            raw.close()
