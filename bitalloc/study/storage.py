"""Where trials live: Optuna RDB storage (SQLite by default, PostgreSQL for many workers); plans by id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bitalloc.allocator.plan import Plan

HEARTBEAT_S = 30
GRACE_S = 90


def open_storage(url: str, *, heartbeat: bool = True):
    """An RDBStorage for ``url``; trials of a dead worker fail after GRACE_S and are retried once."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=HEARTBEAT_S if heartbeat else None,
        grace_period=GRACE_S if heartbeat else None,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1) if heartbeat else None
        ),
    )


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
