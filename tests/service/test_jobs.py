"""The queue on a real SQLite file: one claimant wins, a lapsed lease is taken over, a stale worker's
checkpoint and completion are refused and store nothing."""

from __future__ import annotations

import time

import pytest

from bitalloc.service import jobs
from bitalloc.service.db import make_engine, migrate, sessions
from bitalloc.service.errors import LeaseLost
from bitalloc.service.models import Profile
from bitalloc.service.store import add_profile
from tests.service.conftest import make_profile


@pytest.fixture()
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    migrate(engine)
    yield sessions(engine)
    engine.dispose()


def test_claim_takes_each_job_once(db):
    job = jobs.enqueue(db, "alice", "profile", {}, max_attempts=3)
    first = jobs.claim(db, "w1", lease_seconds=60)
    assert first is not None and first.job_id == job.id and first.attempt == 1
    assert jobs.claim(db, "w2", lease_seconds=60) is None  # leased: nobody else gets it


def test_lapsed_lease_is_taken_over_and_the_stale_worker_is_fenced(db):
    job = jobs.enqueue(db, "alice", "profile", {}, max_attempts=3)
    stale = jobs.claim(db, "w1", lease_seconds=0.05)
    jobs.checkpoint(db, stale, 0, {"rows": [1]}, {"done": 1}, lease_seconds=0.05)
    time.sleep(0.1)
    fresh = jobs.claim(db, "w2", lease_seconds=60)
    assert fresh is not None and fresh.attempt == 2
    assert jobs.checkpoints(db, job.id) == {0: {"rows": [1]}}  # kept for the new attempt

    with pytest.raises(LeaseLost):
        jobs.heartbeat(db, stale, 60)
    with pytest.raises(LeaseLost):
        jobs.checkpoint(db, stale, 1, {"rows": [2]}, {"done": 2}, lease_seconds=60)
    assert set(jobs.checkpoints(db, job.id)) == {0}

    profile = make_profile(layers=1)
    digest = profile.content_hash

    def store(s):
        add_profile(s, profile, digest, "alice")
        return {"profile_hash": digest}

    with pytest.raises(LeaseLost):
        jobs.complete(db, stale, store)
    with db() as s:
        assert s.get(Profile, digest) is None  # the stale completion stored nothing
    assert jobs.complete(db, fresh, store) == {"profile_hash": digest}
    with pytest.raises(LeaseLost):
        jobs.complete(db, fresh, store)  # never completed twice
    done = jobs.get_job(db, job.id)
    assert done.status == "done" and done.attempt == 2 and jobs.checkpoints(db, job.id) == {}


def test_job_whose_workers_keep_dying_fails_with_a_message(db):
    job = jobs.enqueue(db, "alice", "profile", {}, max_attempts=1)
    assert jobs.claim(db, "w1", lease_seconds=0.01) is not None
    time.sleep(0.05)
    assert jobs.claim(db, "w2", lease_seconds=60) is None
    failed = jobs.get_job(db, job.id)
    assert failed.status == "failed" and "died 1 times" in failed.error
