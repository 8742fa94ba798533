"""Quality table on SmolLM2-135M: float reference, uniform RTN/GPTQ recipes, mixed plans.

Run with `make bench-quality` (or `.venv/bin/python benchmarks/quality_smollm2.py`). Writes
runs/bench-quality/{profile-METRIC.parquet,plans/*.json,quality.md,quality.json} and prints the Markdown
table that BENCHMARKS.md quotes, then, for every mixed plan, the uniform recipes of equal or larger size
that it does and does not beat.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from bitalloc.allocator.plan import uniform_plan
from bitalloc.allocator.problem import Budget
from bitalloc.main_job import Report, evaluate_plans
from bitalloc.models.loading import load_model
from bitalloc.pipeline import CalibrationSettings, EvalSettings, make_plan, run_profile
from bitalloc.sensitivity.profile import SensitivityProfile

BITS = (2, 3, 4, 5, 6, 8)
# Every bit width at g64-sym; the g32-asym grid only up to 4 bits: at 4 bits it is already lossless on this
# model (its weights lie on the Q4_1 grid, DESIGN.md), so wider g32-asym recipes add size and nothing else.
UNIFORM = tuple(f"{kind}-w{b}g64-sym" for b in BITS for kind in ("rtn", "gptq")) + tuple(
    f"{kind}-w{b}g32-asym" for b in (2, 3, 4) for kind in ("rtn", "gptq")
)
# The budgets, plus 3.25 and 4.25: exactly the size of the g64-sym 3- and 4-bit recipes.
MIXED_BPW = (2.5, 3.0, 3.25, 3.5, 4.0, 4.25, 4.5)


def machine(device: str) -> str:
    """The hardware the numbers were measured on."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} ({platform.machine()} host)"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu", help="torch device for calibration, GPTQ and evaluation")
    parser.add_argument("--metrics", default="hessian,fisher", help="sensitivity metrics to plan with")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(step: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"[{time.time() - started:7.1f}s] {step} {done}/{total}", flush=True)

    loaded = load_model("smollm2-135m", device=args.device)
    settings = CalibrationSettings(n_windows=args.windows)
    profiles = {}
    for metric in args.metrics.split(","):
        path = args.output / f"profile-{metric}.parquet"
        if path.exists() and SensitivityProfile.load(path).model_hash == loaded.model_hash:
            profiles[metric] = SensitivityProfile.load(path)
        else:
            profiles[metric] = run_profile(loaded, settings, progress=progress, metric=metric)
            profiles[metric].save(path)
    first = next(iter(profiles.values()))
    plans = {name: uniform_plan(first, name) for name in UNIFORM}
    for metric, profile in profiles.items():
        for bpw in MIXED_BPW:
            plans[f"mixed {metric} @ {bpw:g}"] = make_plan(profile, Budget(target_bpw=bpw), solver="milp")
    (args.output / "plans").mkdir(exist_ok=True)
    for name, plan in plans.items():
        plan.save(args.output / "plans" / f"{name.replace(' @ ', '-').replace(' ', '_')}.json")
    report = evaluate_plans(loaded, plans, EvalSettings(max_tokens=args.eval_tokens), progress)
    header = (
        f"Machine: {machine(args.device)}, torch {torch.__version__}; "
        f"date {date.today()}; calibration {args.windows}x512 wiki tokens; eval {args.eval_tokens} tokens "
        f"per corpus, context 512, stride 256; {time.time() - started:.0f} s in all.\n\n"
    )
    text = header + report.markdown() + "\n" + comparison(report)
    (args.output / "quality.md").write_text(text)
    solver = {n: p.solver for n, p in plans.items() if n.startswith("mixed")}
    rows = [
        {
            "name": r.name,
            "bpw": r.bpw,
            "model_bytes": r.model_bytes,
            **{c: vars(v) for c, v in r.results.items()},
        }
        for r in report.rows
    ]
    (args.output / "quality.json").write_text(json.dumps({"solver": solver, "rows": rows}, indent=2))
    print(text)


def comparison(report: Report) -> str:
    """For each mixed plan: the uniform recipes of equal or larger size whose perplexity it beats on both
    corpora, and those it does not."""
    uniform = [r for r in report.rows if r.bpw is not None and not r.name.startswith("mixed")]
    lines = [
        "| mixed plan | bpw | beats (both corpora) | does not beat (wiki / shakespeare ppl) |",
        "|---|---|---|---|",
    ]
    for m in (r for r in report.rows if r.name.startswith("mixed")):
        larger = sorted((u for u in uniform if u.model_bytes >= m.model_bytes), key=lambda u: u.model_bytes)
        won = [u for u in larger if all(m.results[c].perplexity < u.results[c].perplexity for c in m.results)]
        lost = [f"{u.name} ({u.bpw:.3f}: {_ppl(u)})" for u in larger if u not in won]
        lines.append(f"| {m.name} | {m.bpw:.3f} | {len(won)}/{len(larger)} | {', '.join(lost) or 'none'} |")
    return "\n".join(lines) + "\n"


def _ppl(row) -> str:
    return " / ".join(f"{v.perplexity:.2f}" for v in row.results.values())


if __name__ == "__main__":
    main()
