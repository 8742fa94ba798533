"""Planning service under load: a Llama-3-70B-sized profile (80 layers x 7 units x 24 candidates).

Starts `bitalloc serve` on loopback with a fresh SQLite file, uploads a synthetic profile whose
shapes and exact bytes are Llama-3-70B's and whose errors are drawn from a measured SmolLM2 profile
(same unit kind and candidate, scaled by parameter count), then measures:
  1. one plan request at a time: p50 / p99 latency per solver (goal p99 < 50 ms), the solvers taking
     turns on the same random budgets; with each solver's name, status and gap as the plans report them,
  2. a 50-budget frontier request (goal < 500 ms),
  3. N concurrent clients asking for plans for D seconds (goal: no errors; throughput).
Prints a Markdown table; stops by itself.

    python benchmarks/service_load.py [--profile runs/bench-quality/profile-hessian.parquet] [--clients 50]
        [--duration 60] [--plans 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import COLUMNS, SensitivityProfile

LAYERS = 80
HIDDEN, KV, FFN = 8192, 1024, 28672
SHAPES = {  # unit suffix -> ((out, in), tie suffix), Llama-3-70B
    "self_attn.q_proj": ((HIDDEN, HIDDEN), "qkv"),
    "self_attn.k_proj": ((KV, HIDDEN), "qkv"),
    "self_attn.v_proj": ((KV, HIDDEN), "qkv"),
    "self_attn.o_proj": ((HIDDEN, HIDDEN), "o"),
    "mlp.gate_proj": ((FFN, HIDDEN), "gate_up"),
    "mlp.up_proj": ((FFN, HIDDEN), "gate_up"),
    "mlp.down_proj": ((HIDDEN, FFN), "down"),
}
PALETTE = tuple(f"{k}-w{b}g{g}-sym" for k in ("rtn", "gptq") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64))


def llama70b_profile(source: SensitivityProfile, seed: int = 0) -> SensitivityProfile:
    """80 x 7 units x 24 candidates; each unit copies the errors of one random measured unit of its kind."""
    rng = np.random.default_rng(seed)
    t = source.table
    t = t[t["candidate"].isin(PALETTE)]
    t = t.assign(suffix=t["unit"].str.split(".").str[-2:].str.join("."))
    by_unit = {u: g.set_index("candidate") for u, g in t.groupby("unit")}
    rows = []
    for layer in range(LAYERS):
        for suffix, (shape, tie) in SHAPES.items():
            donors = sorted(u for u in by_unit if u.endswith(suffix))
            donor = by_unit[donors[rng.integers(len(donors))]]
            scale = shape[0] * shape[1] / float(donor["rows"].iloc[0] * donor["cols"].iloc[0])
            for name in PALETTE:
                error = float(donor.loc[name, "error"]) * scale
                nbytes = Candidate.parse(name).nbytes(shape)
                rows.append(
                    (
                        f"model.layers.{layer}.{suffix}",
                        f"model.layers.{layer}.{tie}",
                        *shape,
                        name,
                        error,
                        nbytes,
                    )
                )
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    meta = {
        "model_name": "llama-3-70b-synthetic",
        "model_hash": "7" * 64,
        "corpus_hash": source.meta["corpus_hash"],
        "palette": list(PALETTE),
        "unquantized_bytes": 2 * (2 * 128256 * HIDDEN + (2 * LAYERS + 1) * HIDDEN),
        "calibration": source.meta.get("calibration", {}),
        "estimator": "synthetic from " + source.meta.get("model_name", ""),
    }
    return SensitivityProfile(table=table, meta=meta)


def start_server(database_url: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from bitalloc.cli import main; main()", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*cmd, "--database-url", database_url, "--log-level", "warning"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start: {log.read_text()}")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def sequential_plans(
    c: httpx.Client, session: str, n: int, solvers: tuple[str, ...], rng
) -> dict[str, tuple[list[float], str]]:
    """Per solver: request latencies of ``n`` plans, and what the plans say of themselves (solver names,
    how many are proven optimal, the largest reported gap). The solvers take turns on each budget, so
    that none of them alone meets the server's warm-up (SQLite's WAL file growing to its first
    checkpoint) or a burst of load from other processes."""
    took = {s: [] for s in solvers}
    names = {s: set() for s in solvers}
    optimal, gap = dict.fromkeys(solvers, 0), dict.fromkeys(solvers, 0.0)
    for _ in range(n):
        budget = {"target_bpw": round(float(rng.uniform(2.5, 7.5)), 3)}
        for solver in solvers:
            t0 = time.perf_counter()
            r = c.post(f"/v1/sessions/{session}/plans", json={"budget": budget, "solver": solver})
            took[solver].append(time.perf_counter() - t0)
            r.raise_for_status()
            report = r.json()["plan"]["solver"]
            names[solver].add(report["name"])
            optimal[solver] += report["status"] == "optimal"
            gap[solver] = max(gap[solver], float(report["gap"]))
    return {
        s: (took[s], f"{'/'.join(sorted(names[s]))}: {optimal[s]}/{n} optimal, max gap {gap[s]:.2g}")
        for s in solvers
    }


async def load(url: str, token: str, session: str, clients: int, duration: float, solver: str) -> dict:
    ok, errors, took = 0, {}, []
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:

        async def one(i: int) -> None:
            nonlocal ok
            rng = np.random.default_rng(1000 + i)
            while time.monotonic() < stop:
                body = {"budget": {"target_bpw": round(float(rng.uniform(2.5, 7.5)), 3)}, "solver": solver}
                t0 = time.perf_counter()
                try:
                    r = await c.post(f"/v1/sessions/{session}/plans", json=body)
                    key = None if r.status_code == 201 else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                took.append(time.perf_counter() - t0)
                if key is None:
                    ok += 1
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.monotonic() - t0
    return {"ok": ok, "errors": errors, "wall": wall, "took": took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="runs/bench-quality/profile-hessian.parquet")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--plans", type=int, default=100, help="sequential plan requests per solver")
    parser.add_argument("--load-solver", default="lagrange")
    args = parser.parse_args()

    profile = llama70b_profile(SensitivityProfile.load(args.profile))
    problem = profile.to_problem()
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        process, url = start_server(db_url, Path(tmp) / "server.log")
        try:
            from bitalloc.service.auth import create_token
            from bitalloc.service.db import make_engine, sessions

            engine = make_engine(db_url)
            _, token = create_token(sessions(engine), "bench", "service_load")
            engine.dispose()
            rows = []
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                body = {
                    "profile_hash": profile.content_hash,
                    "meta": profile.meta,
                    "table": {col: profile.table[col].tolist() for col in COLUMNS},
                }
                t0 = time.perf_counter()
                c.post("/v1/profiles", json=body).raise_for_status()
                upload = time.perf_counter() - t0
                session = c.post("/v1/sessions", json={"profile_hash": profile.content_hash}).json()["id"]
                first = sequential_plans(c, session, 1, ("auto",), np.random.default_rng(0))["auto"][0][0]
                rows.append(("profile upload (13,440 rows, JSON)", f"{upload * 1000:.0f} ms", "", ""))
                rows.append(
                    ("first plan (loads the profile into the cache)", f"{first * 1000:.0f} ms", "", "")
                )
                solvers = ("auto", "lagrange", "milp")
                measured = sequential_plans(c, session, args.plans, solvers, np.random.default_rng(1))
                for solver in solvers:
                    took, report = measured[solver]
                    rows.append(
                        (
                            f"plan, solver={solver}, {args.plans} sequential requests (solvers in turn)",
                            f"p50 {pct(took, 50):.1f} ms",
                            f"p99 {pct(took, 99):.1f} ms",
                            f"goal p99 < 50 ms; {report}",
                        )
                    )
                budgets = [{"target_bpw": float(b)} for b in np.linspace(2.5, 7.5, 50)]
                ftook = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    c.post(f"/v1/sessions/{session}/frontiers", json={"budgets": budgets}).raise_for_status()
                    ftook.append(time.perf_counter() - t0)
                rows.append(
                    (
                        "frontier, 50 budgets (lagrange), 5 requests",
                        f"median {pct(ftook, 50):.0f} ms",
                        f"max {max(ftook) * 1000:.0f} ms",
                        "goal < 500 ms",
                    )
                )
            res = asyncio.run(load(url, token, session, args.clients, args.duration, args.load_solver))
            errors = ", ".join(f"{k}: {v}" for k, v in res["errors"].items()) or "none"
            rows.append(
                (
                    f"{args.clients} concurrent clients, {args.duration:.0f} s, solver={args.load_solver}",
                    f"{res['ok'] / res['wall']:.1f} plans/s ({res['ok']} ok)",
                    f"p50 {pct(res['took'], 50):.0f} ms, p99 {pct(res['took'], 99):.0f} ms",
                    f"errors: {errors}",
                )
            )
        finally:
            process.terminate()
            process.wait(30)
    print(
        f"\nservice_load: {len(problem.units)} units x {len(problem.candidates)} candidates "
        f"({len(profile.table)} rows), {problem.total_numel / 1e9:.2f} B quantized parameters, "
        f"SQLite WAL, one uvicorn process, loopback\n"
    )
    print("| measurement | result | spread | goal / notes |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
