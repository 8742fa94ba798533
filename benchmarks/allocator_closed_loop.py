"""Closed loop on SmolLM2-135M: does refitting the profile to measured KL and re-solving beat one solve?

Run with `.venv/bin/python benchmarks/allocator_closed_loop.py` (through the heavy lock; options below).
Reads the RTN+GPTQ profile of `benchmarks/quality_smollm2.py` (runs/bench-quality/profile-hessian.parquet, not
modified) and its cached calibration Hessians. For each budget: round 1 solves the profile as it is;
the probes and every measurement for the refit are KL(float || quantized) on CALIBRATION windows of
the wiki corpus; rounds 2.. refit per-label scales and re-solve (bitalloc.allocator.closed_loop).
Then each round's plan is evaluated on held-out wiki EVALUATION text (perplexity, KL), which the fit
never saw. Prints a Markdown table and writes runs/bench-closed-loop/closed_loop.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from bitalloc.allocator.closed_loop import closed_loop, unit_labels
from bitalloc.allocator.measure import PlanKL
from bitalloc.allocator.problem import Budget
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.evaluate.perplexity import EvalResult, evaluate_models
from bitalloc.models.loading import load_model
from bitalloc.models.units import discover_units
from bitalloc.pipeline import CalibrationSettings, EvalSettings, evaluation_tokens, get_calibration
from bitalloc.sensitivity.profile import SensitivityProfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="runs/bench-quality/profile-hessian.parquet")
    parser.add_argument("--bpw", default="3.0,3.5", help="budgets, comma separated")
    parser.add_argument(
        "--group",
        default="type-depth:3",
        help="groupings (unit, type, type-depth:N, all), comma separated",
    )
    parser.add_argument("--direction", default="down", help="probe direction: down, up or both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calib-windows", type=int, default=2, help="512-token windows for the fit")
    parser.add_argument("--calib-seed", type=int, default=1)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--eval-stride", type=int, default=512, help="512 = windows without overlap")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-closed-loop"))
    parser.add_argument(
        "--simulate", action="store_true", help="no model: a known synthetic truth on the profile (seconds)"
    )
    args = parser.parse_args()
    if args.simulate:
        simulate(args)
        return
    started = time.time()
    torch.manual_seed(0)

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    loaded = load_model("smollm2-135m")
    profile = SensitivityProfile.load(args.profile)
    problem = profile.to_problem()
    settings = CalibrationSettings(
        **{k: profile.meta["calibration"][k] for k in ("corpus", "n_windows", "seq_len", "seed")}
    )
    hessians = get_calibration(loaded, discover_units(loaded.model), settings).hessians
    windows = calibration_windows(
        loaded.tokenizer,
        load_corpus("wiki", Split.CALIBRATION),
        n_windows=args.calib_windows,
        seq_len=512,
        seed=args.calib_seed,
    )
    measure = PlanKL(loaded.model, problem.units, problem.candidates, windows, hessians)
    eval_tokens = evaluation_tokens(loaded, "wiki", EvalSettings(max_tokens=args.eval_tokens))
    log(f"profile {len(problem.units)} units x {len(problem.candidates)} candidates")
    evaluated: dict[bytes, EvalResult] = {}  # plan choice -> held-out result (round 1 is shared)
    rows: list[dict] = []
    reference: EvalResult | None = None
    for group in args.group.split(","):
        labels = unit_labels(problem.units, group)
        for bpw in (float(b) for b in args.bpw.split(",")):
            loop = closed_loop(
                problem,
                Budget(target_bpw=bpw),
                measure,
                labels=labels,
                rounds=args.rounds,
                direction=args.direction,
            )
            log(f"{group} {bpw:g} bpw: {len(loop.measured)} plans measured on calibration text")
            todo = {r.solution.choice.tobytes(): r.solution.choice for r in loop.rounds}
            todo = {k: c for k, c in todo.items() if k not in evaluated}
            models = {str(i): measure.quantized_copy(c) for i, c in enumerate(todo.values())}
            if models:
                results = evaluate_models(
                    models, loaded.model, eval_tokens, context=512, stride=args.eval_stride
                )
                reference = results["reference"]
                evaluated.update({k: results[str(i)] for i, k in enumerate(todo)})
            del models
            log(f"{group} {bpw:g} bpw: evaluated {len(todo)} new plans on held-out text")
            for i, r in enumerate(loop.rounds):
                nbytes = int(problem.nbytes[np.arange(len(problem.units)), r.solution.choice].sum())
                res = evaluated[r.solution.choice.tobytes()]
                scales = None if r.scales is None else r.scales.round(4).tolist()
                rows.append(
                    {
                        "group": group,
                        "budget_bpw": bpw,
                        "round": i + 1,
                        "bytes": nbytes,
                        "bpw": problem.bpw_of_bytes(nbytes),
                        "calib_kl": r.measured,
                        "eval_ppl": res.perplexity,
                        "eval_kl": res.kl,
                        "eval_tokens": res.tokens,
                        "best_on_calib": i == loop.best,
                        "measurements": len(loop.measured),
                        "scales": None if scales is None else dict(zip(loop.labels, scales, strict=True)),
                        "changed_units": int((r.solution.choice != loop.rounds[0].solution.choice).sum()),
                    }
                )
            write(args, rows, reference, time.time() - started)
    print_table(args, rows, reference)
    log("done")


def write(args: argparse.Namespace, rows: list[dict], reference: EvalResult | None, seconds: float) -> None:
    """Write what has been measured so far (a timeout loses nothing already done)."""
    args.output.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}",
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": seconds,
        "reference_ppl": None if reference is None else reference.perplexity,
        "rows": rows,
    }
    (args.output / "closed_loop.json").write_text(json.dumps(doc, indent=2) + "\n")


def print_table(args: argparse.Namespace, rows: list[dict], reference: EvalResult | None) -> None:
    """The Markdown table BENCHMARKS.md quotes."""
    ref = (
        ""
        if reference is None
        else f" (float model: ppl {reference.perplexity:.3f} on {reference.tokens} tokens)"
    )
    print()
    print(
        f"Closed loop on SmolLM2-135M: probes {args.direction}, fit on {args.calib_windows}x512 calibration "
        f"tokens, evaluated on held-out wiki text{ref}"
    )
    print()
    print(
        "| grouping | budget | round | bytes | bpw | KL calib (fit data) | ppl wiki-eval | KL wiki-eval "
        "| units changed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = " *" if r["best_on_calib"] else ""
        print(
            f"| {r['group']} | {r['budget_bpw']:g} | {r['round']}{mark} | {r['bytes']} | {r['bpw']:.4f} "
            f"| {r['calib_kl']:.5f} | {r['eval_ppl']:.3f} | {r['eval_kl']:.5f} | {r['changed_units']} |"
        )
    print()
    print(
        "* = the round closed_loop returns (least KL on the calibration windows); units changed: vs round 1"
    )
    for r in rows:
        if r["scales"]:
            print(f"scales {r['group']} {r['budget_bpw']:g} bpw round {r['round']}: {r['scales']}")


def simulate(args: argparse.Namespace) -> None:
    """The loop against a synthetic truth on the real profile: measured = (sum_u w_u e_u / 1000)^power,
    w_u log-normal(0, 0.7) per type-depth:3 label (seed 0). Prints measured loss of rounds 2, 3 and the
    returned round relative to round 1 (geometric mean and worst over budgets 2.5..4.0 and powers 1,
    1.3, 1.6), with and without the intercept."""
    problem = SensitivityProfile.load(args.profile).to_problem()
    truth_labels = unit_labels(problem.units, "type-depth:3")
    rng = np.random.default_rng(0)
    names = list(dict.fromkeys(truth_labels.tolist()))
    scale = dict(zip(names, rng.lognormal(0.0, 0.7, len(names)), strict=True))
    w = np.array([scale[x] for x in truth_labels])
    rows = np.arange(len(problem.units))
    print(
        "| grouping | probes | intercept | round 2 / round 1 (geo, worst) | returned / round 1 (geo, worst) |"
    )
    print("|---|---|---|---:|---:|")
    for group in args.group.split(","):
        labels = unit_labels(problem.units, group)
        for direction in ("down", "both"):
            for intercept in (False, True):
                ratios = []
                for power in (1.0, 1.3, 1.6):

                    def measure(choices, power=power):
                        return np.array(
                            [((w * problem.loss[rows, c]).sum() / 1000) ** power for c in choices]
                        )

                    for bpw in (2.5, 3.0, 3.5, 4.0):
                        loop = closed_loop(
                            problem,
                            Budget(target_bpw=bpw),
                            measure,
                            labels=labels,
                            rounds=args.rounds,
                            direction=direction,
                            intercept=intercept,
                        )
                        first = loop.rounds[0].measured
                        ratios.append(
                            (loop.rounds[1].measured / first, loop.rounds[loop.best].measured / first)
                        )
                r = np.array(ratios)
                geo = np.exp(np.log(r).mean(axis=0))
                print(
                    f"| {group} | {direction} | {intercept} | {geo[0]:.3f}, {r[:, 0].max():.3f} "
                    f"| {geo[1]:.3f}, {r[:, 1].max():.3f} |"
                )


if __name__ == "__main__":
    main()
