"""Quality table on SmolLM2-135M: float reference, uniform RTN/GPTQ recipes, mixed plans.

Run with `make bench-quality` (or `.venv/bin/python benchmarks/quality_smollm2.py`). Writes
runs/bench-quality/{profile.parquet,plans/*.json,quality.md,quality.json} and prints the Markdown
table that BENCHMARKS.md quotes.
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
from bitalloc.main_job import evaluate_plans
from bitalloc.models.loading import load_model
from bitalloc.pipeline import CalibrationSettings, EvalSettings, make_plan, run_profile
from bitalloc.sensitivity.profile import SensitivityProfile

BITS = (2, 3, 4, 5, 6, 8)
# Every bit width at g64-sym; the g32-asym grid only up to 4 bits: at 4 bits it is already lossless on this
# model (its weights lie on the Q4_1 grid, DESIGN.md), so wider g32-asym recipes add size and nothing else.
UNIFORM = tuple(f"{kind}-w{b}g64-sym" for b in BITS for kind in ("rtn", "gptq")) + tuple(
    f"{kind}-w{b}g32-asym" for b in (2, 3, 4) for kind in ("rtn", "gptq")
)
MIXED_BPW = (2.5, 3.0, 3.5, 4.0, 4.5)


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
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(step: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"[{time.time() - started:7.1f}s] {step} {done}/{total}", flush=True)

    loaded = load_model("smollm2-135m", device=args.device)
    settings = CalibrationSettings(n_windows=args.windows)
    path = args.output / "profile.parquet"
    if path.exists() and SensitivityProfile.load(path).model_hash == loaded.model_hash:
        profile = SensitivityProfile.load(path)
    else:
        profile = run_profile(loaded, settings, progress=progress)
        profile.save(path)
    plans = {name: uniform_plan(profile, name) for name in UNIFORM}
    for bpw in MIXED_BPW:
        plans[f"mixed @ {bpw:g}"] = make_plan(profile, Budget(target_bpw=bpw), solver="milp")
    (args.output / "plans").mkdir(exist_ok=True)
    for name, plan in plans.items():
        plan.save(args.output / "plans" / f"{name.replace(' @ ', '-').replace(' ', '_')}.json")
    report = evaluate_plans(loaded, plans, EvalSettings(max_tokens=args.eval_tokens), progress)
    header = (
        f"Machine: {machine(args.device)}, torch {torch.__version__}; "
        f"date {date.today()}; calibration {args.windows}x512 wiki tokens; eval {args.eval_tokens} tokens "
        f"per corpus, context 512, stride 256; {time.time() - started:.0f} s in all.\n\n"
    )
    (args.output / "quality.md").write_text(header + report.markdown())
    solver = {n: p.solver for n, p in plans.items() if n.startswith("mixed")}
    (args.output / "quality.json").write_text(json.dumps({"solver": solver}, indent=2))
    print(header + report.markdown())


if __name__ == "__main__":
    main()
