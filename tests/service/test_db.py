"""The service store and an Optuna study can share one database (each keeps its own schema version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitalloc.service.db import current_revision, make_engine, migrate

optuna = pytest.importorskip("optuna")


def test_store_and_study_share_one_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(url)
    head = migrate(engine)
    storage = optuna.storages.RDBStorage(url)  # Optuna's own alembic_version beside ours
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    assert migrate(engine) == head and current_revision(engine) == head  # ours untouched by Optuna
    again = optuna.load_study(storage=optuna.storages.RDBStorage(url), study_name="s")
    assert len(again.trials) == 1
