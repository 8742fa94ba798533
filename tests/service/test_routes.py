"""The planning flow over real HTTP: upload, session, plans, frontier, compare, export, visibility."""

from __future__ import annotations

import pytest

from tests.service.conftest import make_profile, upload_body


@pytest.fixture(scope="module")
def session(server, tokens) -> dict:
    """Alice's session on a freshly uploaded synthetic profile."""
    with server.client(tokens["alice"]) as c:
        profile = make_profile(layers=3, seed=1)
        r = c.post("/v1/profiles", json=upload_body(profile))
        assert r.status_code in (200, 201), r.text
        r = c.post("/v1/sessions", json={"profile_hash": profile.content_hash, "name": "what fits"})
        assert r.status_code == 201, r.text
        return r.json()


def test_profile_is_stored_once_by_hash_and_shared(server, tokens):
    profile = make_profile(layers=2, seed=7)
    body = upload_body(profile)
    with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
        first = alice.post("/v1/profiles", json=body)
        again = alice.post("/v1/profiles", json=body)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["hash"] == profile.content_hash == again.json()["hash"]
        assert first.json()["n_units"] == 14 and first.json()["n_candidates"] == 5
        assert bob.get(f"/v1/profiles/{profile.content_hash}").status_code == 404  # not his yet
        assert bob.post("/v1/profiles", json=body).status_code == 200  # same content: shared row
        assert bob.get(f"/v1/profiles/{profile.content_hash}").status_code == 200
        s1 = alice.post("/v1/sessions", json={"profile_hash": profile.content_hash}).json()
        s2 = bob.post("/v1/sessions", json={"profile_hash": profile.content_hash}).json()
        assert s1["profile_hash"] == s2["profile_hash"] and s1["id"] != s2["id"]


def test_plan_is_stored_with_its_inputs_and_meets_the_budget(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        r = c.post(
            f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 3.5}, "solver": "milp"}
        )
        assert r.status_code == 201, r.text
        plan = r.json()
        doc = plan["plan"]
        assert doc["schema"] == "bitalloc.plan/v1"
        assert doc["profile_hash"] == session["profile_hash"]
        assert (
            plan["request"]["budget"]["target_bpw"] == 3.5 and plan["request"]["budget"]["max_bytes"] is None
        )
        assert plan["bytes"] == sum(u["nbytes"] for u in doc["assignment"]) == doc["totals"]["bytes"]
        assert plan["bpw"] <= 3.5
        fetched = c.get(f"/v1/plans/{plan['id']}").json()
        assert fetched["plan"] == doc and fetched["request"] == plan["request"]
        listed = c.get(f"/v1/sessions/{session['id']}/plans").json()
        assert plan["id"] in [p["id"] for p in listed]
        again = c.post(f"/v1/plans/{plan['id']}/reproduce")
        assert again.status_code == 200 and again.json()["plan"]["assignment"] == doc["assignment"]


def test_constraint_keeps_attention_at_eight_bits(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        body = {
            "budget": {"target_bpw": 4.5},
            "constraints": [{"kind": "bits", "units": r"self_attn\.", "min_bits": 8}],
        }
        r = c.post(f"/v1/sessions/{session['id']}/plans", json=body)
        assert r.status_code == 201, r.text
        for unit in r.json()["plan"]["assignment"]:
            if "self_attn." in unit["unit"]:
                assert unit["candidate"] == "rtn-w8g32-sym"
        pinned = c.post(
            f"/v1/sessions/{session['id']}/plans",
            json={
                "budget": {"target_bpw": 4.5},
                "constraints": [{"kind": "candidates", "units": "down_proj", "allow": ["gptq-w4g32-asym"]}],
            },
        ).json()
        downs = [u["candidate"] for u in pinned["plan"]["assignment"] if "down_proj" in u["unit"]]
        assert downs and set(downs) == {"gptq-w4g32-asym"}


def test_frontier_and_compare(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        budgets = [{"target_bpw": b} for b in (2.5, 3.0, 3.5, 4.0, 5.0, 8.5)]
        r = c.post(f"/v1/sessions/{session['id']}/frontiers", json={"budgets": budgets})
        assert r.status_code == 201, r.text
        rows = r.json()["rows"]
        assert [row["budget_bpw"] for row in rows] == [b["target_bpw"] for b in budgets]
        losses = [row["loss"] for row in rows]
        assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
        assert all(row["bytes"] <= row["budget_bytes"] for row in rows)
        assert c.get(f"/v1/frontiers/{r.json()['id']}").json()["rows"] == rows
        small = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 3.0}}).json()
        big = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 5.0}}).json()
        cmp = c.get(f"/v1/plans/{small['id']}/compare/{big['id']}").json()
        assert cmp["same_profile"] and cmp["bytes_diff"] == big["bytes"] - small["bytes"] > 0
        assert cmp["predicted_error_diff"] < 0
        assert cmp["units_differing"] == len(cmp["differences"]) > 0
        for d in cmp["differences"]:
            assert d["a"] != d["b"]
        assert c.get(f"/v1/plans/{small['id']}/compare/{small['id']}").json()["units_differing"] == 0


def test_export_returns_the_plan_document(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        plan = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"max_bytes": 40000}}).json()
        r = c.get(f"/v1/plans/{plan['id']}/export")
        assert r.status_code == 200 and r.json() == plan["plan"]
        assert "attachment" in r.headers["content-disposition"]
        bad = c.get(f"/v1/plans/{plan['id']}/export", params={"format": "gguf-typo"})
        assert bad.status_code == 422 and "bitalloc.plan/v1" in bad.json()["detail"]


def test_sessions_and_plans_are_visible_only_to_their_owner(server, tokens, session):
    with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
        plan = alice.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 4}}).json()
        assert bob.get(f"/v1/sessions/{session['id']}").status_code == 404
        assert bob.get(f"/v1/plans/{plan['id']}").status_code == 404
        assert bob.get(f"/v1/plans/{plan['id']}/export").status_code == 404
        r = bob.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 4}})
        assert r.status_code == 404
        assert session["id"] not in [s["id"] for s in bob.get("/v1/sessions").json()]
        assert session["id"] in [s["id"] for s in alice.get("/v1/sessions").json()]


def test_export_to_runtime_formats_or_422_naming_the_fix(server, tokens, session):
    with server.client(tokens["alice"]) as c:
        top = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 16}}).json()
        assert {u["candidate"] for u in top["plan"]["assignment"]} == {"rtn-w8g32-sym"}
        types = c.get(f"/v1/plans/{top['id']}/export", params={"format": "llama-tensor-types"})
        assert types.status_code == 200 and types.headers["content-type"].startswith("text/plain")
        lines = types.text.splitlines()
        assert len(lines) == len(top["plan"]["assignment"]) and all(x.endswith("=Q8_0") for x in lines)
        assert lines[0].startswith("^blk\\.0\\.")
        gptq = c.get(f"/v1/plans/{top['id']}/export", params={"format": "gptq-dynamic"})
        assert gptq.status_code == 200
        assert gptq.json()["bits"] == 8 and gptq.json()["sym"] is True and gptq.json()["dynamic"] == {}

        low = c.post(f"/v1/sessions/{session['id']}/plans", json={"budget": {"target_bpw": 2.6}}).json()
        bad = c.get(f"/v1/plans/{low['id']}/export", params={"format": "llama-tensor-types"})
        assert bad.status_code == 422 and "GGUF palette" in bad.json()["detail"]
