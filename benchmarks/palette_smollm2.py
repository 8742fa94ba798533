"""The quantizer palette on SmolLM2-135M: per-scheme errors, uniform perplexity, mixed plans.

Run with `.venv/bin/python benchmarks/palette_smollm2.py` (reuses runs/bench-quality/profile.parquet, the
foundation profile, when it exists). Writes runs/bench-palette/{palette_rows.parquet,plans/*.json,
palette.{md,json}; palette_predicted.md with --no-eval} after every step and prints the Markdown
tables. Phases: (1) score every new candidate on every unit (proxy tr(ΔW H ΔWᵀ) and relative weight
error ||ΔW||/||W||); (2) plans at
2.5/3.0/3.5/4.0 bpw with the foundation palette and with the full palette; (3) wiki-test perplexity of
the mixed plans, then of uniform recipes, in priority order; (4) the bpw gain at equal perplexity.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bitalloc.allocator.plan import uniform_plan
from bitalloc.allocator.problem import Budget
from bitalloc.models.loading import load_model
from bitalloc.models.units import discover_units
from bitalloc.pipeline import (
    CalibrationSettings,
    EvalSettings,
    get_calibration,
    make_plan,
    quantize_model,
    run_eval,
)
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.registry import quantize_batch
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import profile_model
from bitalloc.sensitivity.proxy import proxy_errors

NEW = (  # kept small: scoring all 210 units on the shared 2-core machine costs minutes per candidate family
    *(f"gptqact-w{b}g64-asym" for b in (2, 3, 4)),
    *(f"gptqact-w{b}g64-asym-o8" for b in (2, 3)),
    *(f"awq-w{b}g64-asym" for b in (3, 4)),
    "kmeans-w3g192-asym",
    *(f"nest-w{b}g64-asym" for b in (2, 3, 4, 8)),
    "mix-w2g64-asym-h50",
    "mix-w3g64-asym-h50",
    "tern-w1g192-sym",
)
REFERENCE = tuple(f"{k}-w{b}g64-asym" for k in ("rtn", "gptq") for b in (2, 3, 4))
# --quick: the cheapest families (one batched GPTQ pass, RTN-based searches), for a loaded machine
QUICK_NEW = tuple(n for n in NEW if n.split("-")[0] in ("gptqact", "awq", "nest", "tern") and "-o" not in n)
QUICK_REFERENCE = tuple(n for n in REFERENCE if n.startswith("rtn"))
BUDGETS = (2.5, 3.0, 3.5, 4.0)
UNIFORM = (  # priority order: evaluated while time allows (those not scored are skipped)
    "gptqact-w3g64-asym",
    "gptq-w3g64-asym",
    "awq-w3g64-asym",
    "nest-w3g64-asym",
    "rtn-w3g64-asym",
    "gptqact-w3g64-asym-o8",
    "kmeans-w3g192-asym",
    "mix-w3g64-asym-h50",
    "gptqact-w4g64-asym",
    "gptq-w4g64-asym",
    "awq-w4g64-asym",
    "nest-w4g64-asym",
    "tern-w1g192-sym",
)


def score_rows(loaded, units, stats, names, progress) -> pd.DataFrame:
    """Proxy and relative weight error of every (unit, candidate)."""
    cands = [Candidate.parse(n) for n in names]
    rows = []
    for i, unit in enumerate(units):
        w = loaded.model.get_submodule(unit.name).weight.detach().float()  # (out, in)
        h = stats.hessians[unit.name]
        fitting = [c for c in cands if c.supports(tuple(w.shape))]
        qs = quantize_batch(w, fitting, h, unit.name)
        deq = [q.dequantize() for q in qs]
        proxies = proxy_errors(w, deq, h)
        norm = float(w.norm())
        for c, q, d, e in zip(fitting, qs, deq, proxies, strict=True):
            rel = float((d - w).norm()) / norm
            rows.append((unit.name, unit.tie, *unit.shape, c.name, e, q.nbytes, rel))
        progress("score", i + 1, len(units))
    cols = ["unit", "tie", "rows", "cols", "candidate", "error", "nbytes", "rel_weight_error"]
    return pd.DataFrame(rows, columns=cols)


def _foundation_rows(foundation: SensitivityProfile, rows: pd.DataFrame) -> pd.DataFrame:
    """Foundation g64-asym rows not scored here (proxy and bytes only; weight error unknown)."""
    names = [n for n in REFERENCE if n not in set(rows["candidate"])]
    extra = foundation.table[foundation.table["candidate"].isin(names)].copy()
    extra["rel_weight_error"] = float("nan")
    return extra


def equal_ppl_bpw(points: list[tuple[float, float]], ppl: float) -> float | None:
    """bpw at which the (bpw, ppl) curve reaches ``ppl`` (linear in log ppl); None outside its range."""
    pts = sorted(points)
    for (b0, p0), (b1, p1) in itertools.pairwise(pts):
        lo, hi = sorted((np.log(p0), np.log(p1)))
        if lo <= np.log(ppl) <= hi and p0 != p1:
            return b0 + (np.log(ppl) - np.log(p0)) / (np.log(p1) - np.log(p0)) * (b1 - b0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-palette"))
    parser.add_argument("--foundation", type=Path, default=Path("runs/bench-quality/profile.parquet"))
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument(
        "--uniform", type=int, default=len(UNIFORM), help="how many uniform recipes to evaluate"
    )
    parser.add_argument("--eval-batch", type=int, default=8, help="models evaluated together")
    parser.add_argument("--quick", action="store_true", help="score only QUICK_NEW (see above)")
    parser.add_argument("--layers", type=int, default=0, help="only the units of the first N layers (0: all)")
    parser.add_argument("--no-eval", action="store_true", help="stop after the plans (predicted errors only)")
    args = parser.parse_args()
    out = args.output
    (out / "plans").mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(step: str, done: int, total: int) -> None:
        if done == total or done % 30 == 0:
            print(f"[{time.time() - started:7.1f}s] {step} {done}/{total}", flush=True)

    loaded = load_model("smollm2-135m")
    units = discover_units(loaded.model)
    settings = CalibrationSettings()
    stats = get_calibration(loaded, units, settings, progress)
    if args.layers:  # a sub-problem: the allocator sees only these units (bpw over their weights)
        units = tuple(u for u in units if int(u.name.split(".")[2]) < args.layers)
    meta = {"model_name": loaded.name}
    if args.foundation.exists() and SensitivityProfile.load(args.foundation).model_hash == loaded.model_hash:
        foundation = SensitivityProfile.load(args.foundation)
        keep = foundation.table["unit"].isin([u.name for u in units])
        foundation = SensitivityProfile(
            table=foundation.table[keep].reset_index(drop=True), meta=foundation.meta
        )
    else:
        from bitalloc.models.units import unquantized_bytes
        from bitalloc.quantizers.candidate import default_palette

        meta["unquantized_bytes"] = unquantized_bytes(loaded.model, units)
        foundation = profile_model(loaded.model, units, stats, default_palette(), meta=meta, on_unit=None)
    rows_path = out / "palette_rows.parquet"
    if rows_path.exists():
        rows = pd.read_parquet(rows_path)
    else:
        names = QUICK_NEW + QUICK_REFERENCE if args.quick else NEW + REFERENCE
        rows = score_rows(loaded, units, stats, names, progress)
        rows.to_parquet(rows_path, index=False)
    new = [n for n in NEW if n in set(rows["candidate"])]
    new_rows = rows[rows["candidate"].isin(new)].drop(columns="rel_weight_error")
    full = SensitivityProfile(
        table=pd.concat([foundation.table, new_rows], ignore_index=True),
        meta=dict(foundation.meta, palette=[*foundation.meta["palette"], *new]),
    )
    scheme = (
        pd.concat([rows, _foundation_rows(foundation, rows)], ignore_index=True)
        .groupby("candidate")
        .agg(rel_weight_error=("rel_weight_error", "mean"), proxy=("error", "sum"), nbytes=("nbytes", "sum"))
    )
    numel = float((rows.drop_duplicates("unit")["rows"] * rows.drop_duplicates("unit")["cols"]).sum())
    scheme["bpw"] = scheme["nbytes"] * 8 / numel
    print(
        f"[{time.time() - started:7.1f}s] scored {len(NEW)} new candidates on {len(units)} units", flush=True
    )

    plans = {}
    for bpw in BUDGETS:
        for label, prof in (("foundation", foundation), ("full", full)):
            t0 = time.time()
            plans[f"{label} @ {bpw:g}"] = make_plan(prof, Budget(target_bpw=bpw), solver="milp")
            print(
                f"[{time.time() - started:7.1f}s] plan {label} @ {bpw:g}: {time.time() - t0:.1f}s", flush=True
            )
    for name in [n for n in UNIFORM if n in full.meta["palette"]][: args.uniform]:
        plans[f"uniform {name}"] = uniform_plan(full, name)
    for name, plan in plans.items():
        plan.save(out / "plans" / f"{name.replace(' @ ', '-').replace(' ', '_')}.json")

    results: dict[str, dict] = {}
    if args.no_eval:
        write_report(out, args, plans, results, scheme, started, predicted_gain(foundation, plans))
        return
    eval_settings = EvalSettings(max_tokens=args.eval_tokens)
    names = list(plans)
    for i in range(0, len(names), args.eval_batch):
        chunk = names[i : i + args.eval_batch]
        models = {n: quantize_model(loaded, plans[n]) for n in chunk}
        res = run_eval(loaded, models, "wiki", eval_settings)
        results["float reference"] = {"ppl": res["reference"].perplexity, "bpw": None}
        for n in chunk:
            results[n] = {"ppl": res[n].perplexity, "kl": res[n].kl, "bpw": plans[n].bpw}
        del models
        print(f"[{time.time() - started:7.1f}s] evaluated {chunk}", flush=True)
        write_report(out, args, plans, results, scheme, started)


def predicted_gain(foundation: SensitivityProfile, plans) -> dict[float, float | None]:
    """Foundation bpw reaching each full plan's predicted error (foundation frontier every 0.125 bpw)."""
    curve = []
    for bpw in np.arange(2.25, 5.01, 0.125):
        p = make_plan(foundation, Budget(target_bpw=float(bpw)), solver="milp")
        curve.append((p.bpw, p.predicted_error))
    return {b: equal_ppl_bpw(curve, plans[f"full @ {b:g}"].predicted_error) for b in BUDGETS}


def write_report(out: Path, args, plans, results, scheme, started, pred_gain=None) -> None:
    """Markdown tables + results.json from whatever has been evaluated so far."""
    lines = [
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; calibration 32x512 wiki tokens; "
        + (
            "no perplexity run (--no-eval); "
            if args.no_eval
            else f"wiki-test ppl on {args.eval_tokens} tokens; "
        )
        + f"units: {'first ' + str(args.layers) + ' layers' if args.layers else 'all'}; "
        f"{time.time() - started:.0f} s so far.",
        "",
        f"Float reference perplexity: {results.get('float reference', {}).get('ppl', float('nan')):.3f}",
        "",
        "| candidate | bpw (all units) | mean rel. weight error | proxy Σ tr(ΔW H ΔWᵀ) | uniform wiki ppl |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in scheme.sort_values("bpw").iterrows():
        ppl = results.get(f"uniform {name}", {}).get("ppl")
        ppl_s = f"{ppl:.2f}" if ppl is not None else "not run"
        lines.append(f"| {name} | {r.bpw:.3f} | {r.rel_weight_error:.4f} | {r.proxy:.4g} | {ppl_s} |")
    lines += [
        "",
        "| budget bpw | foundation: bpw / pred. error / ppl | full: bpw / pred. error / ppl "
        "| full-palette units | foundation bpw at full's ppl | gain (bpw) |",
        "| ---: | --- | --- | --- | ---: | ---: |",
    ]
    curve = [(plans[n].bpw, r["ppl"]) for n, r in results.items() if n.startswith("foundation @")]
    for bpw in BUDGETS:
        f, g = plans[f"foundation @ {bpw:g}"], plans[f"full @ {bpw:g}"]
        fr, gr = results.get(f"foundation @ {bpw:g}"), results.get(f"full @ {bpw:g}")
        fp = f"{fr['ppl']:.2f}" if fr else "not run"
        gp = f"{gr['ppl']:.2f}" if gr else "not run"
        kinds: dict[str, int] = {}
        for c in g.assignment:
            k = Candidate.parse(c.candidate).kind.value + ("-o" if "-o" in c.candidate else "")
            kinds[k] = kinds.get(k, 0) + 1
        eq = equal_ppl_bpw(curve, gr["ppl"]) if gr and len(curve) >= 2 else None
        eq_s, gain_s = (f"{eq:.3f}", f"{eq - g.bpw:+.3f}") if eq is not None else ("outside range", "n/a")
        mix = ", ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
        lines.append(
            f"| {bpw:g} | {f.bpw:.3f} / {f.predicted_error:.4g} / {fp} "
            f"| {g.bpw:.3f} / {g.predicted_error:.4g} / {gp} | {mix} | {eq_s} | {gain_s} |"
        )
    if pred_gain:
        lines += [
            "",
            "| budget bpw | full plan bpw | foundation bpw at equal predicted error | predicted gain (bpw) |",
        ]
        lines += ["| ---: | ---: | ---: | ---: |"]
        for b, eq in pred_gain.items():
            g = plans[f"full @ {b:g}"].bpw
            eq_s, gain_s = (f"{eq:.3f}", f"{eq - g:+.3f}") if eq is not None else ("outside range", "n/a")
            lines.append(f"| {b:g} | {g:.3f} | {eq_s} | {gain_s} |")
    text = "\n".join(lines) + "\n"
    stem = "palette_predicted" if pred_gain else "palette"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    print(text, flush=True)


if __name__ == "__main__":
    main()
