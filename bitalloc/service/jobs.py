"""The job queue in the database: leases, heartbeats, checkpoints and fenced completion.

A worker claims a job by bumping its ``attempt`` under a conditional UPDATE (only one claimant can
win); every later write of that worker (heartbeat, checkpoint, completion) is conditional on the same
attempt and on the job still running. A worker that was killed stops renewing its lease; once the
lease has run out the next worker claims the job with attempt + 1 and resumes after the last
checkpoint. A stale worker's writes then match no row, so a job completes exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from bitalloc.service.errors import LeaseLost, NotFound
from bitalloc.service.models import Job, JobCheckpoint
from bitalloc.service.store import new_id

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: ``attempt`` fences every write it makes."""

    job_id: str
    attempt: int
    kind: str
    params: dict
    owner: str
    model_id: str | None


def enqueue(
    db: sessionmaker, owner: str, kind: str, params: dict, *, max_attempts: int, model_id: str | None = None
) -> Job:
    """A new queued job."""
    row = Job(
        id=new_id(),
        owner=owner,
        kind=kind,
        model_id=model_id,
        params=params,
        status=QUEUED,
        attempt=0,
        max_attempts=max_attempts,
        progress={},
        history=[],
        created_at=time.time(),
    )
    with db.begin() as s:
        s.add(row)
    return row


def get_job(db: sessionmaker, job_id: str, owner: str | None = None) -> Job:
    """The job (``owner``'s, when given), or NotFound."""
    with db() as s:
        row = s.get(Job, job_id)
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"no job with id {job_id!r}; GET /v1/jobs lists yours")
    return row


def list_jobs(db: sessionmaker, owner: str) -> list[Job]:
    """``owner``'s jobs, oldest first."""
    with db() as s:
        return list(s.scalars(select(Job).where(Job.owner == owner).order_by(Job.created_at)))


def claim(db: sessionmaker, worker: str, lease_seconds: float) -> Claim | None:
    """Take the oldest queued job, or a running one whose lease ran out; None when there is none."""
    now = time.time()
    with db() as s:
        candidates = list(
            s.scalars(
                select(Job)
                .where(or_(Job.status == QUEUED, (Job.status == RUNNING) & (Job.lease_until < now)))
                .order_by(Job.created_at)
                .limit(8)
            )
        )
    for job in candidates:
        if job.status == RUNNING and job.attempt >= job.max_attempts:
            _finish(db, job, FAILED, error=f"its worker died {job.attempt} times; resubmit the job")
            continue
        entry = {"attempt": job.attempt + 1, "worker": worker, "claimed_at": now}
        if job.status == RUNNING:
            entry["took_over_from"] = job.worker
        with db.begin() as s:
            won = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.attempt == job.attempt, Job.status == job.status)
                .values(
                    status=RUNNING,
                    attempt=job.attempt + 1,
                    worker=worker,
                    lease_until=now + lease_seconds,
                    history=[*job.history, entry],
                )
            ).rowcount
        if won == 1:
            return Claim(job.id, job.attempt + 1, job.kind, dict(job.params), job.owner, job.model_id)
    return None


def _fenced(s: DbSession, claim: Claim, **values: object) -> None:
    done = s.execute(
        update(Job)
        .where(Job.id == claim.job_id, Job.attempt == claim.attempt, Job.status == RUNNING)
        .values(**values)
    ).rowcount
    if done != 1:
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} was taken over; dropping its work")


def heartbeat(db: sessionmaker, claim: Claim, lease_seconds: float, progress: dict | None = None) -> None:
    """Renew the lease (and record progress); LeaseLost when another worker took the job."""
    values: dict[str, object] = {"lease_until": time.time() + lease_seconds}
    if progress is not None:
        values["progress"] = progress
    with db.begin() as s:
        _fenced(s, claim, **values)


def checkpoint(
    db: sessionmaker, claim: Claim, index: int, data: dict, progress: dict, lease_seconds: float
) -> None:
    """Record one finished piece of the job together with the progress it makes, atomically."""
    with db.begin() as s:
        _fenced(s, claim, progress=progress, lease_until=time.time() + lease_seconds)
        if s.get(JobCheckpoint, (claim.job_id, index)) is None:
            s.add(JobCheckpoint(job_id=claim.job_id, index=index, data=data))


def checkpoints(db: sessionmaker, job_id: str) -> dict[int, dict]:
    """The finished pieces of a job by index."""
    with db() as s:
        rows = s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id))
        return {r.index: r.data for r in rows}


def complete(db: sessionmaker, claim: Claim, store_result: Callable[[DbSession], dict]) -> dict:
    """Mark the job done and store its result in one transaction; LeaseLost (nothing stored) if the
    job is no longer this attempt's to finish."""
    with db.begin() as s:
        _fenced(s, claim, status=DONE, finished_at=time.time(), lease_until=None)
        result = store_result(s)
        s.execute(update(Job).where(Job.id == claim.job_id).values(result=result))
        s.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == claim.job_id))
    return result


def fail(db: sessionmaker, claim: Claim, error: str) -> None:
    """Mark the job failed for good (a deterministic error: running it again would fail again)."""
    with db.begin() as s:
        _fenced(s, claim, status=FAILED, error=error, finished_at=time.time(), lease_until=None)


def _finish(db: sessionmaker, job: Job, status: str, *, error: str) -> None:
    with db.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job.id, Job.attempt == job.attempt, Job.status == job.status)
            .values(status=status, error=error, finished_at=time.time(), lease_until=None)
        )
