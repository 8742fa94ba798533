"""A worker killed mid-job: the next worker takes the job over after its lease and finishes it once."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.service.conftest import bitalloc_command

SETTINGS = {"windows": 2, "seq_len": 64, "layers": 2, "candidates": ["rtn-w4g64-sym", "rtn-w8g64-sym"]}


def start_worker(server, name: str, log) -> subprocess.Popen:
    args = ("worker", "--database-url", server.database_url, "--lease-seconds", "2", "--poll", "0.2")
    return subprocess.Popen(
        bitalloc_command(*args, "--name", name), stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def wait_for(client, job_id: str, done, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job never reached the state: {job}")


def test_killed_worker_job_is_resumed_and_finishes_once(server, tokens, tmp_path):
    with server.client(tokens["alice"]) as c:
        model = c.post("/v1/models", json={"name": "smollm2", "source": "smollm2-135m"}).json()
        job = c.post("/v1/jobs", json={"model_id": model["id"], "settings": SETTINGS})
        assert job.status_code == 202 and job.json()["status"] == "queued"
        job_id = job.json()["id"]

        first = start_worker(server, "w1", tmp_path / "w1.log")
        try:
            seen = wait_for(
                c, job_id, lambda j: j["progress"].get("step") == "profile" and j["progress"]["done"] >= 2
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        killed = c.get(f"/v1/jobs/{job_id}").json()
        assert killed["status"] == "running" and killed["attempt"] == 1
        assert seen["progress"]["total"] == 14 and killed["progress"]["done"] < 14

        second = start_worker(server, "w2", tmp_path / "w2.log")
        try:
            finished = wait_for(c, job_id, lambda j: j["status"] in ("done", "failed"))
        finally:
            second.terminate()
            second.wait(30)
        assert finished["status"] == "done", finished["error"]
        assert finished["attempt"] == 2
        assert [h["worker"] for h in finished["history"]] == ["w1", "w2"]
        assert finished["history"][1]["took_over_from"] == "w1"
        assert finished["result"]["resumed_units"] >= 2  # the checkpoints of the killed worker were kept
        profile = c.get(f"/v1/profiles/{finished['result']['profile_hash']}").json()
        assert profile["n_units"] == 14 and profile["n_candidates"] == 2
        assert profile["model_name"] == "smollm2-135m[:2]"
        assert [j["status"] for j in c.get("/v1/jobs").json() if j["id"] == job_id] == ["done"]


def test_bad_job_settings_are_refused_before_queueing(server, tokens):
    with server.client(tokens["alice"]) as c:
        model = c.post("/v1/models", json={"name": "m", "source": "smollm2-135m"}).json()
        r = c.post("/v1/jobs", json={"model_id": model["id"], "settings": {"candidates": ["rtn-w4"]}})
        assert r.status_code == 422 and "candidate name" in r.json()["detail"]
        assert c.post("/v1/jobs", json={"model_id": "nope"}).status_code == 404


def test_job_that_cannot_succeed_fails_once_with_the_reason(server, tokens, tmp_path):
    with server.client(tokens["bob"]) as c:
        model = c.post("/v1/models", json={"name": "gone", "source": "/nonexistent/model.gguf"}).json()
        job_id = c.post("/v1/jobs", json={"model_id": model["id"], "settings": SETTINGS}).json()["id"]
        args = ("worker", "--database-url", server.database_url, "--once", "--name", "w3")
        done = subprocess.run(bitalloc_command(*args), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["attempt"] == 1  # not retried: it would fail again
        assert "does not exist" in job["error"]
