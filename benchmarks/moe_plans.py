"""MoE plans at equal bytes: layer-level vs expert-level, with and without routing-frequency weighting.

On the project's own trained Mixtral (``python -m bitalloc.models.train_moe``; the test-sized one trains on
CPU), the expert weights (3-D ``gate_up_proj`` / ``down_proj`` tensors, one unit per expert slice) are
allocated under one byte budget by four rules; attention and router stay in float (the same for all):

- ``layer``: every expert of a (layer, tensor) shares one candidate (tie), error tr(ΔW H ΔWᵀ) summed;
- ``expert uniform``: one candidate per expert, error per routed token ``moe_uniform`` (no frequency);
- ``expert freq``: one candidate per expert, error ``hessian`` (the expert Hessian is Σ_routed x xᵀ over
  all tokens, so it carries the routing frequency);
- ``expert freq+weight``: ``moe_freq_weight``, frequency times mean squared routing weight (MC-MoE).

Each plan is fake-quantized (RTN, per expert slice) and its perplexity measured on held-out wiki tokens.
Calibration and evaluation text are disjoint (wiki calibration / evaluation splits). Prints per-expert
routing frequencies and the plan table (Markdown).

    .venv/bin/python benchmarks/moe_plans.py --model /tmp/moe-tiny [--bpw 3,3.5,4] [--eval-tokens 16384]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from datetime import date
from pathlib import Path

import torch

from bitalloc.allocator.plan import plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows, token_stream
from bitalloc.evaluate.perplexity import evaluate_models
from bitalloc.models.moe import discover_moe_units, parse_expert_unit, unit_weight
from bitalloc.models.train_moe import MoeTrainConfig, load_trained_moe, routing_markdown, train_moe
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.experts import RoutingRecorder
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics

RULES = {  # rule -> (metric, experts of one tensor tied)
    "layer": ("hessian", True),
    "expert uniform": ("moe_uniform", False),
    "expert freq": ("hessian", False),
    "expert freq+weight": ("moe_freq_weight", False),
}


def palette() -> list[Candidate]:
    return [Candidate.parse(f"rtn-w{b}g{g}-asym") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64)]


def tie_by_tensor(profile: SensitivityProfile) -> SensitivityProfile:
    """The same profile with every expert slice tied to the others of its 3-D tensor (layer level)."""
    table = profile.table.copy()
    tensor = [parse_expert_unit(u) for u in table["unit"]]
    table["tie"] = [f"{p[0]}.{p[1]}" if p else t for p, t in zip(tensor, table["tie"], strict=True)]
    return SensitivityProfile(table=table, meta=dict(profile.meta))


def fake_quantize(model: torch.nn.Module, choice: dict[str, str]) -> torch.nn.Module:
    """A copy of ``model`` whose expert slices hold their RTN-dequantized weights."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for unit, name in choice.items():
            w = unit_weight(q, unit)  # (out, in) view into the 3-D tensor
            w.copy_(quantize_rtn(w.float(), Candidate.parse(name)).dequantize())
    return q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("runs/moe-tiny"))
    parser.add_argument("--train", action="store_true", help="train the test-sized MoE if --model is absent")
    parser.add_argument("--bpw", default="2.75,3,3.5,4", help="budgets on the expert weights")
    parser.add_argument("--calib-windows", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    t0 = time.time()
    if not (args.model / "config.json").exists():
        if not args.train:
            raise SystemExit(f"{args.model} holds no model: train one (python -m bitalloc.models.train_moe)")
        train_moe(MoeTrainConfig(), args.model)
    loaded = load_trained_moe(args.model, device=args.device)
    model = loaded.model
    seq_len = int(loaded_seq_len(args.model))
    units = tuple(u for u in discover_moe_units(model) if parse_expert_unit(u.name) is not None)
    calib = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(
        loaded.tokenizer, calib, n_windows=args.calib_windows, seq_len=seq_len, seed=3
    ).to(args.device)  # (n, seq_len)
    with RoutingRecorder(model, hessians=True) as rec, torch.no_grad():
        for start in range(0, windows.shape[0], 8):
            model(input_ids=windows[start : start + 8], use_cache=False)
    routing, hessians = rec.stats(), rec.expert_hessians()
    stats = CalibrationStats(
        hessians=hessians,
        n_tokens=routing.n_tokens,
        model_hash=loaded.model_hash,
        corpus_hash=calib.content_hash,
    )
    metrics = sorted({m for m, _ in RULES.values()})
    inputs = MetricInputs(calibration=stats, routing=routing)
    meta = {"model_name": str(args.model), "unquantized_bytes": 0}
    profiles = profile_metrics(model, units, palette(), metrics=metrics, inputs=inputs, meta=meta)
    tokens = token_stream(
        loaded.tokenizer, load_corpus("wiki", Split.EVALUATION), max_tokens=args.eval_tokens
    ).to(args.device)
    numel = sum(u.numel for u in units)
    rows = []
    for bpw in (float(b) for b in args.bpw.split(",")):
        budget = Budget(max_bytes=int(bpw * numel / 8))
        models, info = {}, {}
        for rule, (metric, tied) in RULES.items():
            profile = tie_by_tensor(profiles[metric]) if tied else profiles[metric]
            plan = plan_from_solution(profile, solve(profile.to_problem(), budget), budget)
            models[rule] = fake_quantize(model, plan.candidate_of())
            info[rule] = plan
        measured = evaluate_models(models, model, tokens, context=seq_len, stride=seq_len // 2)
        for rule, plan in info.items():
            bits = [Candidate.parse(c.candidate).bits for c in plan.assignment]
            rows.append(
                (
                    bpw,
                    rule,
                    8 * plan.nbytes / numel,
                    measured[rule].perplexity,
                    measured[rule].kl,
                    min(bits),
                    max(bits),
                )
            )
        reference = measured["reference"].perplexity
    print(
        f"Machine: {_machine(args.device)}, torch {torch.__version__}; "
        f"date {date.today()}; "
        f"model {args.model} ({len(units)} expert units, {numel} expert weights); calibration "
        f"{args.calib_windows}x{seq_len} wiki tokens; eval {tokens.numel()} held-out wiki tokens "
        f"(context {seq_len}); float perplexity {reference:.3f}; {time.time() - t0:.0f} s.\n"
    )
    print("Per-expert share of calibration tokens (each token picks top-k experts):\n")
    print(routing_markdown(routing.table()) + "\n")
    print("| budget bpw | plan | expert bpw | perplexity | KL | min bits | max bits |")
    print("|---|---|---|---|---|---|---|")
    for bpw, rule, got, ppl, kl, lo, hi in rows:
        print(f"| {bpw:g} | {rule} | {got:.3f} | {ppl:.3f} | {kl:.4f} | {lo} | {hi} |")


def _machine(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"


def loaded_seq_len(path: Path) -> int:
    """The training window length recorded by train_moe (bitalloc.json)."""
    import json

    return json.loads((path / "bitalloc.json").read_text())["train"]["seq_len"]


if __name__ == "__main__":
    main()
