"""Which sensitivity metric predicts the real loss? Spearman ρ between predicted error and measured KL / ppl.

On SmolLM2-135M: calibrate once, profile an RTN palette under every metric (quantizing once), then
draw random plans, fake-quantize the model for each and measure KL to the float model and perplexity
on held-out wiki text. Two plan sets: "random" (per-plan Dirichlet mix of 3-5 bits, g64/g128, 3.25-4.75 bpw,
bytes vary) and "equal bytes" (each unit 3 or 5 bits by a coin flip, all plans ≈ 4.5 bpw: only the
allocation differs). A plan's predicted error under a metric is the sum of its units' errors. Prints a
Markdown table (and the best predictor: highest mean ρ over KL and ppl on all plans) and writes
runs/bench-metrics/{results.json,metrics.md}.

    .venv/bin/python benchmarks/sensitivity_metrics.py [--plans 24] [--equal-plans 8] [--eval-tokens 4096]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.evaluate.perplexity import evaluate_models
from bitalloc.models.loading import load_model
from bitalloc.models.units import discover_units
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.fisher import accumulate_fisher
from bitalloc.sensitivity.higgs import fit_noise_coefficients
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics

METRICS = ("hessian", "fisher", "fisher_scaled", "awq", "slim", "weight_mse", "higgs")
DERIVED = {"fisher_scaled": ("hessian", "fisher")}  # metrics computed from two others' profiles
BITS = (2, 3, 4, 5, 6, 8)
RANDOM_BITS = (3, 4, 5)
EVAL_GROUP = 4  # plans evaluated together share the reference forward


def palette() -> list[Candidate]:
    return [Candidate.parse(f"rtn-w{b}g{g}-asym") for b in BITS for g in (64, 128)]


def random_plans(
    units: list[str], shapes: dict[str, tuple[int, int]], n_random: int, n_equal: int, seed: int
) -> dict[str, dict[str, str]]:
    """name -> unit -> candidate: ``n_random`` plans of 3.25-4.75 bpw and ``n_equal`` plans of ≈4.5 bpw.

    A random plan draws a per-plan mix of bit widths (Dirichlet over 3..5 bits) and, per unit, a width
    from it and a group size of 64 or 128 (64 where 128 does not divide the input), redrawn until the
    plan lies in [3.25, 4.75] bpw. (2-bit RTN anywhere in SmolLM2 sends perplexity past 10⁴, which says
    nothing about the metrics.) An equal-bytes plan gives each unit 3 or 5 bits (g64) by a coin flip:
    only the allocation differs.
    """
    rng = np.random.default_rng(seed)
    weights = np.array([shapes[u][0] * shapes[u][1] for u in units], dtype=float)
    in_features = np.array([shapes[u][1] for u in units])
    choices = np.array(RANDOM_BITS)
    plans: dict[str, dict[str, str]] = {}
    while len(plans) < n_random:
        p = rng.dirichlet(np.full(len(choices), 0.7))
        bits = rng.choice(choices, size=len(units), p=p)
        groups = rng.choice(np.array((64, 128)), size=len(units))
        groups[in_features % 128 != 0] = 64  # g128 does not divide 576 (hidden size)
        bpw = bits + 32.0 / groups  # float16 scale and min per group
        mean = float((bpw * weights).sum() / weights.sum())
        if 3.25 <= mean <= 4.75:
            plans[f"random-{len(plans)}"] = {
                u: f"rtn-w{b}g{g}-asym" for u, b, g in zip(units, bits, groups, strict=True)
            }
    for i in range(n_equal):
        plans[f"equal-{i}"] = {u: f"rtn-w{int(rng.choice((3, 5)))}g64-asym" for u in units}
    return plans


def fake_quantize(model: torch.nn.Module, plan: dict[str, str]) -> torch.nn.Module:
    q = copy.deepcopy(model)
    with torch.no_grad():
        for unit, name in plan.items():
            lin = q.get_submodule(unit)
            lin.weight.copy_(quantize_rtn(lin.weight.float(), Candidate.parse(name)).dequantize())
    return q


def measure_profiles(model, loaded, units, metrics: tuple[str, ...], args, log) -> dict:
    """Calibrate, collect what the metrics need and profile the RTN palette under every metric."""
    from bitalloc.sensitivity.fisher_scaled import fisher_scaled

    derived = [m for m in metrics if m in DERIVED]
    metrics = tuple(
        dict.fromkeys([*(m for m in metrics if m not in DERIVED), *sum(map(DERIVED.get, derived), ())])
    )
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(
        loaded.tokenizer, corpus, n_windows=args.windows, seq_len=args.seq_len, seed=0
    )
    stats = calibrate(model, units, windows, model_hash=loaded.model_hash, corpus_hash=corpus.content_hash)
    log("calibrated")
    fisher = accumulate_fisher(model, units, windows[:8], batch_size=2) if "fisher" in metrics else {}
    log("fisher")
    coeffs = fit_noise_coefficients(model, units, windows[:2, :128]) if "higgs" in metrics else {}
    log("higgs coefficients")
    inputs = MetricInputs(calibration=stats, fisher=fisher, coefficients=coeffs)
    profiles = profile_metrics(
        model,
        units,
        palette(),
        metrics=metrics,
        inputs=inputs,
        meta={"model_name": "smollm2-135m", "unquantized_bytes": 0},
    )
    if "fisher_scaled" in derived:
        profiles["fisher_scaled"] = fisher_scaled(profiles["hessian"], profiles["fisher"])
    return profiles


def cross_terms_table(group_cols: tuple[int, ...] = (128, 256)) -> str:
    """Σ full proxy error vs Σ column-group block errors over SmolLM2, one RTN format per table row."""
    from bitalloc.pipeline import CalibrationSettings, get_calibration
    from bitalloc.sensitivity.column_groups import column_bounds

    loaded = load_model("smollm2-135m")
    units = discover_units(loaded.model)
    stats = get_calibration(loaded, units, CalibrationSettings())
    lines = [
        "| candidate | group cols | Σ full error | Σ block errors | dropped cross terms |",
        "|---|---|---|---|---|",
    ]
    for name in ("rtn-w3g64-asym", "rtn-w4g64-asym"):
        cand = Candidate.parse(name)
        for cols in group_cols:
            full = blocks = 0.0
            for unit in units:
                w = loaded.model.get_submodule(unit.name).weight.detach().float()  # (out, in)
                h = stats.hessians[unit.name].double()  # (in, in)
                bounds = column_bounds(w.shape[1], cols)
                dq = torch.cat(
                    [quantize_rtn(w[:, a:b].contiguous(), cand).dequantize() for a, b in bounds], 1
                )
                d = (dq - w).double()  # (out, in)
                full += float(((d @ h) * d).sum())
                blocks += sum(float(((d[:, a:b] @ h[a:b, a:b]) * d[:, a:b]).sum()) for a, b in bounds)
            lines.append(
                f"| {name} | {cols} | {full:.1f} | {blocks:.1f} | {100 * (full - blocks) / full:+.2f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-metrics"))
    parser.add_argument("--plans", type=int, default=24, help="random plans (3.25-4.75 bpw)")
    parser.add_argument("--equal-plans", type=int, default=8, help="equal-bytes plans (3 or 5 bits)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--stride", type=int, default=512, help="eval window stride (context 512)")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names")
    parser.add_argument("--device", default="cpu", help="torch device for everything")
    parser.add_argument(
        "--cross-terms", action="store_true", help="only measure what column groups drop (cached calibration)"
    )
    args = parser.parse_args()
    if args.cross_terms:
        print(cross_terms_table())
        return
    metrics = tuple(args.metrics.split(","))
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    loaded = load_model("smollm2-135m", device=args.device)
    model, units = loaded.model, discover_units(loaded.model)
    saved = {m: args.output / f"profile-{m}.parquet" for m in metrics}
    if all(path.exists() for path in saved.values()):  # a re-run reuses the profiles of an earlier one
        profiles = {m: SensitivityProfile.load(path) for m, path in saved.items()}
    else:
        profiles = measure_profiles(model, loaded, units, metrics, args, log)
        for name, prof in profiles.items():
            prof.save(saved[name])
    log("profiled")
    err = {m: {(r.unit, r.candidate): r.error for r in p.table.itertuples()} for m, p in profiles.items()}
    nbytes = {(r.unit, r.candidate): r.nbytes for r in profiles["hessian"].table.itertuples()}
    numel = sum(u.numel for u in units)
    plans = random_plans(
        [u.name for u in units], {u.name: u.shape for u in units}, args.plans, args.equal_plans, seed=0
    )
    tokens = token_stream(
        loaded.tokenizer, load_corpus("wiki", Split.EVALUATION), max_tokens=args.eval_tokens
    )
    results_path = args.output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    todo = [name for name in plans if name not in results]
    for start in range(0, len(todo), EVAL_GROUP):
        group = todo[start : start + EVAL_GROUP]
        candidates = {n: fake_quantize(model, plans[n]) for n in group}
        measured = evaluate_models(candidates, model, tokens, context=512, stride=args.stride)
        for name in group:
            keys = list(plans[name].items())
            results[name] = {
                "bpw": 8 * sum(nbytes[k] for k in keys) / numel,
                "kl": measured[name].kl,
                "ppl": measured[name].perplexity,
                "predicted": {m: sum(err[m][k] for k in keys) for m in metrics},
            }
            row = results[name]
            log(f"{name}: bpw {row['bpw']:.3f} kl {row['kl']:.4f} ppl {row['ppl']:.2f}")
        results_path.write_text(json.dumps(results, indent=1))
    table = markdown(results, args, time.time() - t0, metrics)
    (args.output / "metrics.md").write_text(table)
    print(table)


def markdown(results: dict, args: argparse.Namespace, seconds: float, metrics: tuple[str, ...]) -> str:
    """The ρ table, one row per metric, and the best predictor."""
    cuda = torch.device(args.device).type == "cuda"
    where = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"
    )
    lines = [
        f"Machine: {where}, torch {torch.__version__}; "
        f"date {date.today()}; "
        f"calibration {args.windows}x{args.seq_len} wiki tokens; eval {args.eval_tokens} "
        f"held-out wiki tokens (context 512, stride {args.stride}); "
        f"palette rtn-w{{2,3,4,5,6,8}}g{{64,128}}-asym; {seconds:.0f} s.\n",
        "| metric | ρ(KL) random | ρ(ppl) random | ρ(KL) equal bytes | ρ(ppl) equal bytes "
        "| ρ(KL) all | ρ(ppl) all |",
        "|---|---|---|---|---|---|---|",
    ]
    sets = {
        "random": [v for k, v in results.items() if k.startswith("random")],
        "equal": [v for k, v in results.items() if k.startswith("equal")],
    }
    sets["all"] = sets["random"] + sets["equal"]

    def rho(rows: list, metric: str, key: str) -> float:
        if len(rows) < 3:
            return float("nan")
        return float(spearmanr([r["predicted"][metric] for r in rows], [r[key] for r in rows]).statistic)

    score = {}
    for m in metrics:
        cells = [rho(sets[s], m, key) for s in ("random", "equal", "all") for key in ("kl", "ppl")]
        score[m] = (cells[4] + cells[5]) / 2
        lines.append(f"| {m} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    n_r, n_e = len(sets["random"]), len(sets["equal"])
    bpw_r = [r["bpw"] for r in sets["random"]] or [0.0]
    bpw_e = [r["bpw"] for r in sets["equal"]] or [0.0]
    ranked = sorted((s, m) for m, s in score.items() if s == s)
    best = ranked[-1][1] if ranked else "n/a"
    lines.append(
        f"\n{n_r} random plans (bpw {min(bpw_r):.3f}-{max(bpw_r):.3f}), {n_e} equal-bytes plans "
        f"(bpw {min(bpw_e):.3f}-{max(bpw_e):.3f}); Spearman ρ of the summed predicted error against "
        f"measured KL(float || plan) and perplexity. Best predictor (mean of the two 'all' columns): {best}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
