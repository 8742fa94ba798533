"""Closed-form scoring against exact scoring on SmolLM2-135M: the profiles, the plans, and their perplexity.

For the Hessian proxy and the Fisher-scaled proxy, the exact profile (every RTN and GPTQ candidate quantized
and scored) and the closed-form one (``profile --scoring estimate``: no GPTQ run) of the foundation palette:

- Spearman ρ and the spread of log(estimate / exact) over all (unit, candidate) pairs, per kind;
- plans at each budget from either profile: the share of units given the same candidate, the plan's
  exact proxy (the exact profile's sum for the chosen candidates) over the exact optimum's, and
  perplexity / KL on wiki-test and Shakespeare.

    .venv/bin/python benchmarks/estimate_quality.py [--output runs/bench-estimate] [--eval-tokens 4096]
        [--bpw 2.5,3,3.5,4] [--device cpu]

Exact profiles are read from ``runs/bench-quality/profile-{hessian,fisher}.parquet`` (``make bench-quality``
writes them) or computed.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from bitalloc.allocator.problem import Budget
from bitalloc.main_job import evaluate_plans
from bitalloc.models.loading import load_model
from bitalloc.pipeline import CalibrationSettings, EvalSettings, make_plan, run_profile
from bitalloc.sensitivity.fisher_scaled import fisher_scaled
from bitalloc.sensitivity.profile import SensitivityProfile

EXACT = Path("runs/bench-quality")


def exact_profile(loaded, metric: str, settings: CalibrationSettings, progress) -> SensitivityProfile:
    """The exact profile of ``metric`` from ``runs/bench-quality`` if it is of this model, else computed."""
    path = EXACT / f"profile-{metric}.parquet"
    if path.exists():
        profile = SensitivityProfile.load(path)
        if profile.model_hash == loaded.model_hash:
            return profile
    profile = run_profile(loaded, settings, progress=progress, metric=metric)
    profile.save(path)
    return profile


def agreement(estimate: SensitivityProfile, exact: SensitivityProfile) -> list[dict]:
    """Spearman ρ and log-ratio spread of the estimate against the exact errors, per candidate kind."""
    both = exact.table.merge(estimate.table, on=["unit", "candidate"], suffixes=("", "_e"))
    out = []
    for kind in ("rtn", "gptq"):
        rows = both[both["candidate"].str.startswith(f"{kind}-")]
        ratio = np.log(rows["error_e"] / rows["error"])
        ratio = ratio[np.isfinite(ratio)]
        out.append(
            {
                "kind": kind,
                "pairs": len(rows),
                "spearman": float(spearmanr(rows["error_e"], rows["error"])[0]),
                "log_ratio_median": float(np.median(ratio)),
                "log_ratio_sd": float(np.std(ratio)),
            }
        )
    return out


def exact_loss(plan, exact: SensitivityProfile) -> float:
    """The exact profile's summed error over the candidates ``plan`` chose."""
    table = exact.table.set_index(["unit", "candidate"])["error"]
    return float(sum(table[(c.unit, c.candidate)] for c in plan.assignment))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/bench-estimate"))
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--bpw", default="2.5,3,3.5,4")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(step: str, done: int, total: int) -> None:
        if done == total:
            print(f"[{time.time() - started:7.1f}s] {step} {done}/{total}", flush=True)

    loaded = load_model("smollm2-135m", device=args.device)
    settings = CalibrationSettings()
    hessian = exact_profile(loaded, "hessian", settings, progress)
    fisher = exact_profile(loaded, "fisher", settings, progress)
    t0 = time.time()
    estimate = run_profile(loaded, settings, progress=progress, metric="hessian", scoring="estimate")
    estimate_s = time.time() - t0
    profiles = {
        "hessian exact": hessian,
        "hessian estimate": estimate,
        "fisher_scaled exact": fisher_scaled(hessian, fisher),
        "fisher_scaled estimate": fisher_scaled(estimate, fisher),
    }
    pairs = {"hessian": ("hessian estimate", "hessian exact")}
    pairs["fisher_scaled"] = ("fisher_scaled estimate", "fisher_scaled exact")
    stats = {m: agreement(profiles[e], profiles[x]) for m, (e, x) in pairs.items()}
    plans, facts = {}, {}
    for bpw in [float(b) for b in args.bpw.split(",")]:
        for name, profile in profiles.items():
            plans[f"{name} @ {bpw:g}"] = make_plan(profile, Budget(target_bpw=bpw), solver="milp")
        for metric, (est, ex) in pairs.items():
            p_est, p_ex = plans[f"{est} @ {bpw:g}"], plans[f"{ex} @ {bpw:g}"]
            same = {c.unit: c.candidate for c in p_ex.assignment}
            facts[f"{metric} @ {bpw:g}"] = {
                "same_candidate": sum(same[c.unit] == c.candidate for c in p_est.assignment) / len(same),
                "exact_loss_ratio": exact_loss(p_est, profiles[ex]) / exact_loss(p_ex, profiles[ex]),
            }
    report = evaluate_plans(loaded, plans, EvalSettings(max_tokens=args.eval_tokens), progress)
    text = [
        f"SmolLM2-135M, {args.device}, torch {torch.__version__}, {date.today()}; calibration 32x512 wiki "
        f"tokens; closed-form profile {estimate_s:.1f} s (calibration cached); "
        f"eval {args.eval_tokens} tokens per corpus; {time.time() - started:.0f} s in all.\n",
        "| metric | kind | pairs | Spearman ρ | median log(est/exact) | sd |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for metric, rows in stats.items():
        for r in rows:
            text.append(
                f"| {metric} | {r['kind']} | {r['pairs']} | {r['spearman']:.4f}"
                f" | {r['log_ratio_median']:+.3f} | {r['log_ratio_sd']:.3f} |"
            )
    text += [
        "",
        "| plan | bpw | wiki ppl | Shakespeare ppl | wiki KL | same candidate as exact"
        " | exact loss / exact optimum |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows[1:]:
        metric, _, bpw = row.name.partition(" @ ")
        fact = facts.get(f"{metric.split()[0]} @ {bpw}") if metric.endswith("estimate") else None
        extra = f"{fact['same_candidate']:.2f} | {fact['exact_loss_ratio']:.4f}" if fact else "- | -"
        wiki, shk = row.results["wiki"], row.results["shakespeare"]
        text.append(
            f"| {row.name} | {row.bpw:.3f} | {wiki.perplexity:.2f} | {shk.perplexity:.2f} | {wiki.kl:.3f}"
            f" | {extra} |"
        )
    (args.output / "estimate.md").write_text("\n".join(text) + "\n")
    (args.output / "estimate.json").write_text(json.dumps({"agreement": stats, "plans": facts}, indent=2))
    print("\n".join(text))


if __name__ == "__main__":
    main()
