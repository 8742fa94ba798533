"""Which sensitivity metric predicts the real loss? Spearman ρ between predicted error and measured KL / ppl.

On SmolLM2-135M: calibrate once, profile an RTN palette under every metric (quantizing once), then
draw random plans, fake-quantize the model for each and measure KL to the float model and perplexity
on held-out wiki text. Two plan sets: "spread" (per-plan Dirichlet mix of bit widths, bytes vary) and
"equal bytes" (each unit 3 or 5 bits by a coin flip, all plans ≈ 4 bpw: only the allocation differs).
A plan's predicted error under a metric is the sum of its units' errors. Prints a Markdown table and
writes runs/bench-metrics/{results.json,metrics.md}.

    .venv/bin/python benchmarks/sensitivity_metrics.py [--plans 12] [--eval-tokens 2048]
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
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics

METRICS = ("hessian", "fisher", "awq", "slim", "weight_mse", "higgs")
BITS = (2, 3, 4, 5, 6, 8)


def palette() -> list[Candidate]:
    return [Candidate.parse(f"rtn-w{b}g64-asym") for b in BITS]


def random_plans(units: list[str], n: int, seed: int) -> dict[str, dict[str, int]]:
    """name -> unit -> bits; n 'spread' plans and n 'equal bytes' plans."""
    rng = np.random.default_rng(seed)
    plans = {}
    for i in range(n):
        p = rng.dirichlet(np.full(len(BITS) - 1, 0.7))  # over BITS[1:]: 2-bit everywhere is useless
        plans[f"spread-{i}"] = {u: int(rng.choice(BITS[1:], p=p)) for u in units}
    for i in range(n):
        plans[f"equal-{i}"] = {u: int(rng.choice((3, 5))) for u in units}
    return plans


def fake_quantize(model: torch.nn.Module, bits: dict[str, int]) -> torch.nn.Module:
    q = copy.deepcopy(model)
    with torch.no_grad():
        for unit, b in bits.items():
            lin = q.get_submodule(unit)
            cand = Candidate.parse(f"rtn-w{b}g64-asym")
            lin.weight.copy_(quantize_rtn(lin.weight.float(), cand).dequantize())
    return q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-metrics"))
    parser.add_argument("--plans", type=int, default=12, help="plans per set (two sets)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names")
    args = parser.parse_args()
    metrics = tuple(args.metrics.split(","))
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    loaded = load_model("smollm2-135m")
    model, units = loaded.model, discover_units(loaded.model)
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
    for name, prof in profiles.items():
        prof.save(args.output / f"profile-{name}.parquet")
    log("profiled")
    err = {m: {(r.unit, r.candidate): r.error for r in p.table.itertuples()} for m, p in profiles.items()}
    nbytes = {(r.unit, r.candidate): r.nbytes for r in profiles["hessian"].table.itertuples()}
    numel = sum(u.numel for u in units)
    plans = random_plans([u.name for u in units], args.plans, seed=0)
    tokens = token_stream(
        loaded.tokenizer, load_corpus("wiki", Split.EVALUATION), max_tokens=args.eval_tokens
    )
    results_path = args.output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, bits in plans.items():
        if name in results:
            continue
        keys = [(u, f"rtn-w{b}g64-asym") for u, b in bits.items()]
        qmodel = fake_quantize(model, bits)
        measured = evaluate_models({"plan": qmodel}, model, tokens)["plan"]
        del qmodel
        results[name] = {
            "bpw": 8 * sum(nbytes[k] for k in keys) / numel,
            "kl": measured.kl,
            "ppl": measured.perplexity,
            "predicted": {m: sum(err[m][k] for k in keys) for m in metrics},
        }
        results_path.write_text(json.dumps(results, indent=1))
        log(f"{name}: bpw {results[name]['bpw']:.3f} kl {measured.kl:.4f} ppl {measured.perplexity:.2f}")
    table = markdown(results, args, time.time() - t0, metrics)
    (args.output / "metrics.md").write_text(table)
    print(table)


def markdown(results: dict, args: argparse.Namespace, seconds: float, metrics: tuple[str, ...]) -> str:
    lines = [
        f"Machine: {platform.machine()} CPU (2 cores shared), torch {torch.__version__}; "
        f"date {date.today()}; "
        f"calibration {args.windows}x{args.seq_len} wiki tokens; eval {args.eval_tokens} "
        "held-out wiki tokens; "
        f"palette rtn-w{{2,3,4,5,6,8}}g64-asym; {seconds:.0f} s.\n",
        "| metric | ρ(KL) spread | ρ(ppl) spread | ρ(KL) equal bytes | ρ(ppl) equal bytes | ρ(KL) all |",
        "|---|---|---|---|---|---|",
    ]
    sets = {
        "spread": [v for k, v in results.items() if k.startswith("spread")],
        "equal": [v for k, v in results.items() if k.startswith("equal")],
    }
    sets["all"] = sets["spread"] + sets["equal"]

    def rho(rows: list, metric: str, key: str) -> str:
        if len(rows) < 3:
            return "n/a"
        return f"{spearmanr([r['predicted'][metric] for r in rows], [r[key] for r in rows]).statistic:.3f}"

    for m in metrics:
        cells = [rho(sets["spread"], m, "kl"), rho(sets["spread"], m, "ppl"), rho(sets["equal"], m, "kl")]
        cells += [rho(sets["equal"], m, "ppl"), rho(sets["all"], m, "kl")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    n_s, n_e = len(sets["spread"]), len(sets["equal"])
    bpw = [r["bpw"] for r in sets["equal"]] or [0.0]
    lines.append(
        f"\n{n_s} spread plans, {n_e} equal-bytes plans (bpw {min(bpw):.3f}-{max(bpw):.3f}); "
        "Spearman ρ of the "
        "summed predicted error against measured KL(float || plan) and perplexity."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
