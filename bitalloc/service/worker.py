"""``bitalloc worker``: claim jobs, run them under a heartbeat, checkpoint, complete exactly once."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass

from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from bitalloc.errors import BitallocError
from bitalloc.service import jobs
from bitalloc.service.db import make_engine, migrate, sessions
from bitalloc.service.errors import LeaseLost
from bitalloc.service.models import Model
from bitalloc.service.profiling import run_profile_job
from bitalloc.service.settings import ServiceSettings
from bitalloc.service.store import add_profile


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker process behaves."""

    name: str = ""
    poll_seconds: float = 1.0
    once: bool = False  # exit when the queue is empty instead of waiting


def worker_name() -> str:
    """host:pid, unique among the workers that are alive."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Heartbeat(threading.Thread):
    """Renews the lease every third of it and publishes the latest progress; notices a lost lease."""

    def __init__(self, db: sessionmaker, claim: jobs.Claim, lease: float) -> None:
        super().__init__(daemon=True)
        self.db, self.claim, self.lease = db, claim, lease
        self.progress: dict = {}
        self.lost = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.lease / 3):
            try:
                jobs.heartbeat(self.db, self.claim, self.lease, dict(self.progress))
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # a database hiccup: try again on the next beat
                traceback.print_exc()


def run_job(db: sessionmaker, claim: jobs.Claim, settings: ServiceSettings) -> None:
    """Run one claimed job to completion (or to a recorded failure)."""
    beat = _Heartbeat(db, claim, settings.lease_seconds)
    beat.start()
    resumed = jobs.checkpoints(db, claim.job_id)
    base = {"attempt": claim.attempt, "resumed_units": len(resumed)}

    def progress(step: str, done: int, total: int) -> None:
        if beat.lost.is_set():
            raise LeaseLost(f"job {claim.job_id}: lease lost")
        beat.progress = {**base, "step": step, "done": done, "total": total}

    def save(index: int, data: dict, total: int) -> None:
        beat.progress = {**base, "step": "profile", "done": index + 1, "total": total}
        jobs.checkpoint(db, claim, index, data, dict(beat.progress), settings.lease_seconds)

    try:
        with db() as s:
            model = s.get(Model, claim.model_id) if claim.model_id else None
        if model is None:
            raise BitallocError(f"job {claim.job_id} names no registered model; register one first")
        profile, reused = run_profile_job(model.source, claim.params, resumed, save, progress)
        digest = profile.content_hash

        def store(s: DbSession) -> dict:
            add_profile(s, profile, digest, claim.owner)
            return {"profile_hash": digest, "units": len(profile.units()), "resumed_units": reused}

        jobs.complete(db, claim, store)
    except LeaseLost:
        pass  # another worker owns the job now; our work is dropped, theirs counts
    except BitallocError as exc:
        _fail(db, claim, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug: record it; the job would fail the same way again
        traceback.print_exc()
        _fail(db, claim, f"internal error {type(exc).__name__}: {exc}")
    finally:
        beat.stopped.set()
        beat.join()


def _fail(db: sessionmaker, claim: jobs.Claim, error: str) -> None:
    with contextlib.suppress(LeaseLost):  # another worker took the job over meanwhile; its outcome counts
        jobs.fail(db, claim, error)


def run_worker(settings: ServiceSettings, options: WorkerOptions) -> int:
    """Claim and run jobs until stopped (or, with ``once``, until the queue is empty); returns jobs run."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    db = sessions(engine)
    name = options.name or worker_name()
    ran = 0
    try:
        while True:
            claim = jobs.claim(db, name, settings.lease_seconds)
            if claim is None:
                if options.once:
                    return ran
                time.sleep(options.poll_seconds)
                continue
            run_job(db, claim, settings)
            ran += 1
    finally:
        engine.dispose()
