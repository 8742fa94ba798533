"""Bad input over real HTTP: each gets its status and a message that names the fix; nothing changes."""

from __future__ import annotations

import pytest

from tests.service.conftest import make_profile, upload_body


@pytest.fixture(scope="module")
def session(server, tokens) -> dict:
    with server.client(tokens["alice"]) as c:
        profile = make_profile(layers=2, seed=3)
        assert c.post("/v1/profiles", json=upload_body(profile)).status_code in (200, 201)
        return c.post("/v1/sessions", json={"profile_hash": profile.content_hash}).json()


def test_openapi_is_published(server):
    with server.client(None) as c:
        doc = c.get("/openapi.json").json()
    assert doc["info"]["title"] == "bitalloc planning service"
    for path in ("/v1/sessions/{session_id}/plans", "/v1/sessions/{session_id}/frontiers", "/v1/jobs"):
        assert path in doc["paths"]


def test_requests_without_a_valid_token_are_refused(server, tokens, session):
    for token in (None, "bat_not-a-real-token"):
        with server.client(token) as c:
            r = c.get(f"/v1/sessions/{session['id']}")
            assert r.status_code == 401 and "token" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
    with server.client(None) as c:
        r = c.get("/v1/sessions", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]


def test_malformed_json_is_400(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        r = c.post(
            f"/v1/sessions/{session['id']}/plans",
            content=b'{"budget": {"target_bpw": 3.5',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"] == "MalformedJSON"
        assert "valid JSON" in r.json()["detail"]


def test_wrong_fields_are_422_and_name_the_field(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        r = c.post(
            f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 3.5}, "solvr": "milp"}
        )
        assert r.status_code == 422 and "solvr" in r.json()["detail"]
        r = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {}})
        assert r.status_code == 422 and "give" in r.json()["detail"] and "budget" in r.json()["detail"]
        r = c.post(
            f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 3}, "solver": "gurobi"}
        )
        assert r.status_code == 422 and "known solvers" in r.json()["detail"]


def test_unknown_ids_are_404(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        for path in (
            "/v1/sessions/nope",
            "/v1/plans/nope",
            "/v1/jobs/nope",
            "/v1/models/nope",
            "/v1/frontiers/nope",
        ):
            r = c.get(path)
            assert r.status_code == 404 and "nope" in r.json()["detail"]
        r = c.post("/v1/sessions", json={"profile_hash": "0" * 64})
        assert r.status_code == 404 and "upload it" in r.json()["detail"]


def test_infeasible_budget_is_422_with_the_feasible_range(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        before = c.get(f"/v1/sessions/{session['id']}/plans").json()
        r = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 1.0}})
        assert r.status_code == 422 and r.json()["error"] == "InfeasibleBudget"
        assert "feasible budgets run from" in r.json()["detail"]
        r = c.post(f"/v1/sessions/{session['id']}/frontiers", json={"budgets": [{"target_bpw": 0.5}]})
        assert r.status_code == 422
        assert c.get(f"/v1/sessions/{session['id']}/plans").json() == before


def test_profile_with_a_wrong_hash_is_refused_and_nothing_is_stored(server, tokens):
    profile = make_profile(layers=2, seed=11)
    body = upload_body(profile)
    body["table"]["error"][0] *= 2  # content edited after hashing
    with server.client(tokens["alice"]) as c:
        r = c.post("/v1/profiles", json=body)
        assert r.status_code == 422 and "does not match the content" in r.json()["detail"]
        assert c.get(f"/v1/profiles/{profile.content_hash}").status_code == 404
        assert profile.content_hash not in [p["hash"] for p in c.get("/v1/profiles").json()]


def test_oversized_bodies_are_413(server, tokens, session):
    big = make_profile(layers=60, seed=5)  # ~2,100 rows: over the test server's 150,000-byte upload limit
    with server.client(tokens["alice"]) as c:
        r = c.post("/v1/profiles", json=upload_body(big))
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert c.get(f"/v1/profiles/{big.content_hash}").status_code == 404
        huge_plan = {
            "budget": {"target_bpw": 3},
            "constraints": [{"kind": "bits", "units": "x" * 400, "min_bits": 2}] * 100,
        }
        r = c.post(f"/v1/sessions/{session['id']}/plans", json=huge_plan)
        assert r.status_code == 413

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(100):
                yield b" " * 1024

        r = c.post(
            f"/v1/sessions/{session['id']}/plans",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
