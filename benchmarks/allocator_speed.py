"""Allocator speed at frontier scale, against the peers' approaches (PuLP+CBC, simulated annealing).

Run with `.venv/bin/python benchmarks/allocator_speed.py` (options: --profile, --pulp-limit, --sa-steps).
Three synthetic instances shaped like real models, with errors drawn from the SmolLM2-135M profile
measured by `benchmarks/quality_smollm2.py` (each synthetic unit takes a random SmolLM2 unit's
per-weight error curve, times its own size, times log-normal noise) and exact byte counts:

- llama3-70b: 80 layers x 7 matrices x 24 candidates, one 3.5 bpw budget; and a 100-budget frontier;
- group-level: 1,000,000 units (4096-weight groups) x 4 candidates, one 3.0 bpw budget;
- deepseek-v3: 61 layers x (256 experts x 3 matrices + 5 attention matrices) x 8 candidates, gate and
  up of each expert tied (fused), total bytes <= 2.75 bpw and active bytes (routing-weighted) <= 90%
  of a uniform 4-bit model's.

Prints a Markdown table: time and objective of ours, PuLP+CBC and simulated annealing, with ratios.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.resources import usage_of
from bitalloc.allocator.solve import solve, solve_many
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile

PROFILE = "runs/bench-quality/profile-hessian.parquet"


def error_curves(profile: SensitivityProfile, palette: list[str]) -> np.ndarray:
    """(n, len(palette)) per-weight errors of the SmolLM2 units that were scored on every candidate."""
    p = profile.to_problem()
    cols = [p.candidates.index(c) for c in palette]
    full = p.feasible[:, cols].all(axis=1)
    return p.loss[full][:, cols] / p.numel[full][:, None]


def synth(
    rng: np.random.Generator, curves: np.ndarray, palette: list[str], shapes: list[tuple[int, int]], names
) -> AllocationProblem:
    """One unit per shape: exact bytes, errors from a random measured curve scaled to the unit's size."""
    numel = np.array([a * b for a, b in shapes], dtype=np.int64)
    uniq = {s: i for i, s in enumerate(dict.fromkeys(shapes))}
    table = np.array([[Candidate.parse(c).nbytes(s) for c in palette] for s in uniq], dtype=np.int64)
    nbytes = table[[uniq[s] for s in shapes]]
    pick = rng.integers(0, len(curves), len(shapes))
    loss = curves[pick] * numel[:, None] * rng.lognormal(0.0, 0.5, len(shapes))[:, None]
    return AllocationProblem(
        units=tuple(names),
        candidates=tuple(palette),
        loss=loss,
        nbytes=nbytes,
        feasible=np.ones(loss.shape, dtype=bool),
        numel=numel,
        tie=np.arange(len(shapes), dtype=np.int64),
    )


def llama70b(rng, profile) -> AllocationProblem:
    palette = [f"gptq-w{b}g{g}-{s}" for b in (2, 3, 4, 5, 6, 8) for g in (32, 128) for s in ("sym", "asym")]
    mats = {
        "q": (8192, 8192), "k": (1024, 8192), "v": (1024, 8192), "o": (8192, 8192),
        "gate": (28672, 8192), "up": (28672, 8192), "down": (8192, 28672),
    }  # fmt: skip
    names = [f"layers.{i}.{k}" for i in range(80) for k in mats]
    shapes = [mats[n.split(".")[-1]] for n in names]
    return synth(rng, error_curves(profile, palette), palette, shapes, names)


def group_level(rng, profile, units: int = 1_000_000) -> AllocationProblem:
    palette = ["gptq-w2g128-sym", "gptq-w3g128-sym", "gptq-w4g128-sym", "gptq-w8g128-sym"]
    names = [f"g{i}" for i in range(units)]
    return synth(rng, error_curves(profile, palette), palette, [(1, 4096)] * units, names)


def deepseek_v3(rng, profile) -> AllocationProblem:
    palette = [f"gptq-w{b}g{g}-sym" for b in (2, 3, 4, 8) for g in (32, 128)]
    attn = {"q_a": (1536, 7168), "q_b": (24576, 1536), "kv_a": (576, 7168), "kv_b": (32768, 512),
            "o": (7168, 16384)}  # fmt: skip
    names, shapes, tie, active = [], [], [], []
    for layer in range(61):
        for k, s in attn.items():
            names.append(f"layers.{layer}.attn.{k}")
            shapes.append(s)
            tie.append(len(names))
            active.append(1.0)
        freq = rng.lognormal(0.0, 0.7, 256)
        freq = freq / freq.sum() * 8  # 8 of 256 experts run per token
        for e in range(256):
            for k, s in (("gate", (2048, 7168)), ("up", (2048, 7168)), ("down", (7168, 2048))):
                names.append(f"layers.{layer}.experts.{e}.{k}")
                shapes.append(s)
                tie.append(len(names) - 1 if k == "up" else len(names))  # gate and up fused
                active.append(freq[e])
    p = synth(rng, error_curves(profile, palette), palette, shapes, names)
    act = np.array(active)
    return replace(p, loss=p.loss * np.maximum(act, 0.05)[:, None], tie=np.array(tie), active=act)


def anneal(problem: AllocationProblem, budget: Budget, steps: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Simulated annealing over the tie-merged problem (the ExLlamaV2 approach): random one-group
    moves, Metropolis acceptance on the loss, infeasible moves refused; returns choice and seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    m = problem.merged()
    limits = [("bytes", m.nbytes.astype(np.float64), float(budget.to_bytes(problem)))]
    if budget.max_active_bytes is not None:
        limits.append(
            ("active", problem.group_sum(problem.active[:, None] * problem.nbytes), budget.max_active_bytes)
        )
    choice = np.argmin(m.nbytes, axis=1)
    rows = np.arange(len(choice))
    used = [float(c[rows, choice].sum()) for _, c, _ in limits]
    loss = float(m.loss[rows, choice].sum())
    temp0 = loss / len(choice)
    groups, cands = rng.integers(0, len(choice), steps), rng.integers(0, m.loss.shape[1], steps)
    accept = rng.random(steps)
    for i in range(steps):
        g, c = int(groups[i]), int(cands[i])
        old = int(choice[g])
        delta = [float(cost[g, c] - cost[g, old]) for _, cost, _ in limits]
        if any(u + d > lim for u, d, (_, _, lim) in zip(used, delta, limits, strict=True)):
            continue
        dl = float(m.loss[g, c] - m.loss[g, old])
        temp = temp0 * (1e-4 ** (i / steps))
        if dl <= 0 or accept[i] < np.exp(-dl / temp):
            choice[g] = c
            loss += dl
            used = [u + d for u, d in zip(used, delta, strict=True)]
    return choice[problem.group_index()], time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default=PROFILE)
    parser.add_argument("--pulp-limit", type=float, default=60.0, help="CBC time limit per instance (s)")
    parser.add_argument("--sa-steps", type=int, default=300_000)
    parser.add_argument("--pulp-max-units", type=int, default=100_000, help="skip PuLP above this many units")
    parser.add_argument(
        "--llama-only",
        action="store_true",
        help="only the llama3-70b instance and its frontier (the same numbers as in the full run)",
    )
    args = parser.parse_args()
    profile = SensitivityProfile.load(args.profile)
    rng = np.random.default_rng(0)  # llama3-70b is drawn first: its numbers do not depend on --llama-only
    instances = {"llama3-70b (560 x 24)": (llama70b(rng, profile), Budget(target_bpw=3.5))}
    if not args.llama_only:
        instances["group-level (1,000,000 x 4)"] = (group_level(rng, profile), Budget(target_bpw=3.0))
        ds = deepseek_v3(rng, profile)
        rows = np.arange(len(ds.units))
        four = int(np.argmax(np.array(ds.candidates) == "gptq-w4g128-sym"))
        active4 = float((ds.active * ds.nbytes[rows, four]).sum())
        instances[f"deepseek-v3 ({len(ds.units):,} x 8, ties, active)"] = (
            ds,
            Budget(target_bpw=2.75, max_active_bytes=0.9 * active4),
        )
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}\n")
    print(
        "| instance | solver | seconds | objective | gap to bound | time ratio vs ours "
        "| objective ratio vs ours |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (problem, budget) in instances.items():
        solve(problem, budget)  # warm-up (imports, caches)
        ours, t_ours = timed(lambda p=problem, b=budget: solve(p, b))
        usage = usage_of(problem, ours.choice)
        assert usage["bytes"] <= budget.to_bytes(problem)
        print(
            f"| {name} | ours ({ours.solver}) | {t_ours:.3f} | {ours.objective:.6g} | "
            f"{ours.gap:.2e} | 1 | 1 |"
        )
        if ours.solver != "auto->lagrange":
            lag, t_lag = timed(lambda p=problem, b=budget: solve(p, b, solver="lagrange"))
            print(f"| {name} | lagrange | {t_lag:.3f} | {lag.objective:.6g} | {lag.gap:.2e} | "
                  f"{t_lag / t_ours:.2f} | {lag.objective / ours.objective:.6f} |")  # fmt: skip
        if len(problem.units) <= args.pulp_max_units:
            cbc, t_cbc = timed(
                lambda p=problem, b=budget: solve(p, b, solver="pulp", time_limit=args.pulp_limit)
            )
            print(f"| {name} | PuLP+CBC ({cbc.status}) | {t_cbc:.3f} | {cbc.objective:.6g} | {cbc.gap:.2e} | "
                  f"{t_cbc / t_ours:.1f} | {cbc.objective / ours.objective:.6f} |")  # fmt: skip
        else:
            print(
                f"| {name} | PuLP+CBC | not run | | | | (>{args.pulp_max_units} units: model build too big) |"
            )
        choice, t_sa = anneal(problem, budget, args.sa_steps)
        sa = float(problem.loss[np.arange(len(choice)), choice].sum())
        print(f"| {name} | simulated annealing ({args.sa_steps} steps) | {t_sa:.3f} | {sa:.6g} | | "
              f"{t_sa / t_ours:.1f} | {sa / ours.objective:.4f} |")  # fmt: skip
    problem, _ = instances["llama3-70b (560 x 24)"]
    budgets = [Budget(target_bpw=float(b)) for b in np.linspace(2.6, 8.5, 100)]
    for solver in ("lagrange", "milp"):
        front, t = timed(lambda s=solver: solve_many(problem, budgets, solver=s))
        worst = max(s.gap for s in front)
        print(f"| llama3-70b frontier, 100 budgets | {solver} | {t:.3f} | | max {worst:.2e} | | |")


if __name__ == "__main__":
    main()
