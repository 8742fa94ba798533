"""Where trials live: Optuna RDB storage (SQLite by default, PostgreSQL for many workers); plans by id."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from bitalloc.allocator.plan import Plan
from bitalloc.errors import InvalidInput

HEARTBEAT_S = 30
GRACE_S = 90


def storage_url(url: str) -> str:
    """``url`` with the driver this project installs (psycopg 3 for PostgreSQL); InvalidInput if it is
    not an SQLite or PostgreSQL URL."""
    if url.startswith("sqlite:///"):
        return url
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    raise InvalidInput(
        f"study storage {url!r} is neither sqlite:///PATH nor postgresql://USER@HOST/DB; "
        "give one of those in [study].storage or --storage"
    )


def open_storage(url: str, *, heartbeat: bool = True, grace_s: int = GRACE_S):
    """An RDBStorage for ``url``; a trial whose worker sent no heartbeat for ``grace_s`` seconds (a dead
    worker) is failed by the next worker and retried once with the same parameters."""
    import optuna

    url = storage_url(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _rdb(optuna, url, engine_kwargs, heartbeat, grace_s)


def _rdb(optuna, url: str, engine_kwargs: dict, heartbeat: bool, grace_s: int):
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=max(1, min(HEARTBEAT_S, grace_s // 3)) if heartbeat else None,
        grace_period=grace_s if heartbeat else None,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1) if heartbeat else None
        ),
    )
    if url.startswith("sqlite:///"):
        serialize_sqlite_transactions(storage.engine)
    return storage


def serialize_sqlite_transactions(engine) -> None:
    """Begin every transaction of ``engine`` with BEGIN IMMEDIATE (one writer at a time).

    pysqlite starts no transaction before a SELECT, and SQLite ignores ``SELECT ... FOR UPDATE``: two workers
    could both read a trial as waiting and both take it (one then fails with "Cannot tell a COMPLETE
    trial"). With the driver's own transaction handling off and BEGIN IMMEDIATE issued by SQLAlchemy, Optuna's
    read-then-update of a waiting trial is atomic across processes."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN below, not pysqlite

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # drop connections opened before the hooks


def plan_id(plan: Plan) -> str:
    """Content id of a plan: the first 16 hex digits of sha256 over its JSON."""
    return hashlib.sha256(json.dumps(plan.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def save_plan(folder: Path, plan: Plan) -> str:
    """Write ``folder/plans/ID.json`` (atomically, once per content) and return ID."""
    pid = plan_id(plan)
    path = folder / "plans" / f"{pid}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp-{pid}-{id(plan)}.json")
        plan.save(tmp)
        tmp.replace(path)
    return pid


def load_plan(folder: Path, pid: str) -> Plan:
    """The plan a trial's ``plan_id`` attribute names."""
    return Plan.load(folder / "plans" / f"{pid}.json")
