"""The same store on PostgreSQL, when one is reachable: set BITALLOC_TEST_POSTGRES_URL
(e.g. postgresql://bitalloc:bitalloc@127.0.0.1/bitalloc_test); skipped otherwise."""

from __future__ import annotations

import os
import time

import pytest

from bitalloc.service import jobs
from bitalloc.service.auth import create_token
from bitalloc.service.db import current_revision, make_engine, migrate, sessions
from bitalloc.service.errors import LeaseLost
from tests.service.conftest import make_profile, start_server, upload_body

URL = os.environ.get("BITALLOC_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="no PostgreSQL: set BITALLOC_TEST_POSTGRES_URL to run")


def test_service_on_postgres(tmp_path):
    engine = make_engine(URL)
    assert engine.dialect.name == "postgresql"
    migrate(engine)
    assert current_revision(engine) == "0001"
    db = sessions(engine)
    _, token = create_token(db, "carol", "postgres test")

    server = start_server(URL, tmp_path / "server.log")
    try:
        profile = make_profile(layers=2, seed=int(time.time()))
        with server.client(token) as c:
            assert c.post("/v1/profiles", json=upload_body(profile)).status_code == 201
            assert c.post("/v1/profiles", json=upload_body(profile)).status_code == 200
            session = c.post("/v1/sessions", json={"profile_hash": profile.content_hash}).json()
            plan = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 4}})
            assert plan.status_code == 201, plan.text
            doc = plan.json()["plan"]
            assert c.get(f"/v1/plans/{plan.json()['id']}").json()["plan"] == doc  # JSON round-trips exactly
            assert (
                c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 1}}).status_code
                == 422
            )
    finally:
        server.stop()

    job = jobs.enqueue(db, "carol", "profile", {}, max_attempts=3)
    stale = jobs.claim(db, "w1", lease_seconds=0.05)
    while stale is not None and stale.job_id != job.id:  # older queued jobs of earlier runs
        stale = jobs.claim(db, "w1", lease_seconds=0.05)
    assert stale is not None
    time.sleep(0.1)
    fresh = jobs.claim(db, "w2", lease_seconds=60)
    while fresh is not None and fresh.job_id != job.id:
        fresh = jobs.claim(db, "w2", lease_seconds=60)
    assert fresh is not None and fresh.attempt == 2
    with pytest.raises(LeaseLost):
        jobs.complete(db, stale, lambda s: {})
    assert jobs.complete(db, fresh, lambda s: {"ok": True}) == {"ok": True}
    assert jobs.get_job(db, job.id).status == "done"
    engine.dispose()
