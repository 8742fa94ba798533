"""The quantizer palette on SmolLM2-135M: per-scheme errors, uniform perplexity, mixed plans, W8A8/W4A4.

Run with `.venv/bin/python benchmarks/palette_smollm2.py` (reuses the foundation profile of
``--metric`` (default fisher, the pipeline's default), runs/bench-quality/profile-METRIC.parquet, and the
cached float calibration). Phases, each resumable from runs/bench-palette-s3:
(1) ``--phase score``: every new candidate on every unit (proxy tr(ΔW H ΔWᵀ), Fisher Σ F ΔW² with the
foundation's Fisher diagonals, relative weight error ||ΔW||/||W||, exact bytes),
checkpointed to palette_rows.parquet; (2) ``--phase eval``: plans at
2.5/3.0/3.5/4.0 bpw with the foundation palette (RTN+GPTQ) and the full palette, extra foundation points
for the frontier, uniform recipes, then the simulated W8A8/W4A4 recipes, in priority order; wiki-test
perplexity of each (``--max-models`` per run; results.json after every batch); (3) the report
(palette.md): per-scheme table, W8A8/W4A4 table with the analytic latency, mixed plans and the bpw gain
at equal perplexity (interpolated in log ppl along each measured frontier).

Evaluation detail: each unit's weight is quantized once with the real quantizer, its exact stored bytes
summed and checked against the plan, and dequantized once to float32; the evaluated model holds those
float32 weights (PackedLinear computes the same tensor on every call, too slowly for this CPU), and
W8A8/W4A4 units fake-quantize their inputs with ``activations.quantize_activations`` as PackedLinear does.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import time
from collections import Counter
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.allocator.plan import uniform_plan
from bitalloc.allocator.problem import Budget
from bitalloc.models.loading import load_model
from bitalloc.models.units import discover_units, get_submodule_parent
from bitalloc.pipeline import (
    CalibrationSettings,
    EvalSettings,
    _metric_statistics,
    get_calibration,
    make_plan,
    run_eval,
)
from bitalloc.quantizers.activations import act_bits, latency_table, quantize_activations
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.registry import quantize_batch
from bitalloc.sensitivity.fisher_scaled import fisher_scaled, scaled_errors, unit_scales
from bitalloc.sensitivity.metrics import weighted_sq_errors
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.proxy import proxy_errors

NEW = (  # the new kinds scored on every unit (bpw-comparable g64 / g192 settings)
    *(f"gptqact-w{b}g64-asym" for b in (2, 3, 4)),
    *(f"gptqact-w{b}g64-asym-o8" for b in (2, 3)),
    *(f"awq-w{b}g64-asym" for b in (3, 4)),
    "kmeans-w3g192-asym",
    "kmeans-w4g192-asym",
    "lutgptq-w2g192-asym",
    "lutgptq-w3g192-asym",
    # one table per whole row: 576 inputs (q/k/v/o/gate/up) or 1536 (down); each fits only its units
    *(f"lutgptq-w{b}g{g}-asym" for b in (3, 4) for g in (576, 1536)),
    *(f"nest-w{b}g64-asym" for b in (2, 3, 4, 8)),
    "mix-w2g64-asym-h50",
    "mix-w3g64-asym-h50",
    "tern-w1g192-sym",
)
REFERENCE = tuple(f"{k}-w{b}g64-asym" for k in ("rtn", "gptq") for b in (2, 3, 4))
RTN_REFERENCE = tuple(n for n in REFERENCE if n.startswith("rtn"))
# --fast: what the loaded 2-core machine scores on all 210 units in ~15 min (gptqact, nest, tern, one
# k-means); AWQ's alpha search, mixed bits, outliers and the GPTQ reference are the costly ones
FAST_NEW = (
    *(n for n in NEW if n.split("-")[0] in ("gptqact", "nest", "tern") and "-o" not in n),
    "kmeans-w3g192-asym",
)
BUDGETS = (2.5, 3.0, 3.5, 4.0)
FRONTIER = (2.25, 4.5)  # extra foundation points so that each full plan's ppl falls inside the frontier
ACT = (
    "gptq-w8g64-sym",
    "a8-w8g64-sym",
    "a8-w8g64-sym-o32",
    "gptq-w4g64-sym",
    "a4-w4g64-sym",
    "a4-w4g64-sym-o32",
)
UNIFORM = (  # priority order
    "gptqact-w3g64-asym",
    "gptq-w3g64-asym",
    "awq-w3g64-asym",
    "nest-w3g64-asym",
    "rtn-w3g64-asym",
    "kmeans-w3g192-asym",
    "lutgptq-w3g192-asym",
    "lutgptq-w2g192-asym",
    "gptqact-w3g64-asym-o8",
    "mix-w3g64-asym-h50",
    "gptqact-w4g64-asym",
    "gptq-w4g64-asym",
    "awq-w4g64-asym",
    "kmeans-w4g192-asym",
    "nest-w4g64-asym",
    "rtn-w4g64-asym",
    "tern-w1g192-sym",
)
ACT_FIRST = ("a8-w8g64-sym", "a4-w4g64-sym", "a4-w4g64-sym-o32", "gptq-w4g64-sym")
PREFILL_TOKENS = 2048


def score_rows(loaded, units, stats, names, progress, path: Path, fisher=None) -> pd.DataFrame:
    """Proxy, Fisher (Σ F ΔW², when ``fisher`` diagonals are given) and relative weight error of every
    (unit, candidate); resumes from / checkpoints to ``path``."""
    cols = ["unit", "tie", "rows", "cols", "candidate", "error", "fisher_error", "nbytes", "rel_weight_error"]
    done = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=cols)
    have = set(zip(done["unit"], done["candidate"], strict=True))
    cands = [Candidate.parse(n) for n in names]
    rows = []
    for i, unit in enumerate(units):
        w = loaded.model.get_submodule(unit.name).weight.detach().float()  # (out, in)
        h = stats.hessians[unit.name].to(w.device)  # (in, in)
        fitting = [c for c in cands if c.supports(tuple(w.shape)) and (unit.name, c.name) not in have]
        qs = quantize_batch(w, fitting, h, unit.name)
        deq = [q.dequantize() for q in qs]
        proxies = proxy_errors(w, deq, h) if deq else []
        nan = [float("nan")] * len(deq)
        fishers = weighted_sq_errors(w, deq, fisher[unit.name].to(w.device)) if fisher else nan
        norm = float(w.norm())
        for c, q, d, e, fe in zip(fitting, qs, deq, proxies, fishers, strict=True):
            rel = float((d - w).norm()) / norm
            rows.append((unit.name, unit.tie, *unit.shape, c.name, e, fe, q.nbytes, rel))
        progress("score", i + 1, len(units))
        if rows and ((i + 1) % 30 == 0 or i + 1 == len(units)):
            done = pd.concat([done, pd.DataFrame(rows, columns=cols)], ignore_index=True)
            done.to_parquet(path, index=False)
            rows = []
    return done


def check_against_foundation(rows: pd.DataFrame, foundation: SensitivityProfile, log) -> None:
    """The errors scored here for the foundation's own candidates must match the foundation profile."""
    both = rows.merge(foundation.table, on=["unit", "candidate"], suffixes=("", "_foundation"))
    if both.empty:
        return
    diff = (both["error"] - both["error_foundation"]).abs()
    rel = (diff / both["error_foundation"].abs().clip(1e-30)).max()
    log(f"errors of {len(both)} shared rows vs the foundation profile: max relative difference {rel:.2e}")
    if rel > 1e-3 or (both["nbytes"] != both["nbytes_foundation"]).any():
        raise SystemExit("the scored rows disagree with the foundation profile: re-run --phase score")


def _foundation_rows(foundation: SensitivityProfile, rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Foundation g64-asym rows not scored here (its metric's error and bytes only)."""
    names = [n for n in REFERENCE if n not in set(rows["candidate"])]
    extra = foundation.table[foundation.table["candidate"].isin(names)].copy()
    if metric == "fisher":
        extra["fisher_error"], extra["error"] = extra["error"], float("nan")
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


class DequantizedLinear(nn.Module):
    """A unit's dequantized float32 weight; W·A· candidates fake-quantize their inputs first."""

    def __init__(self, weight: torch.Tensor, bias, outliers: torch.Tensor | None, bits: int) -> None:
        super().__init__()
        self.weight, self.bias, self.outliers, self.bits = weight, bias, outliers, bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits < 16:
            x = quantize_activations(x, self.bits, self.outliers)  # (..., in)
        return F.linear(x, self.weight.to(x.dtype), self.bias)


def entries(foundation: SensitivityProfile, full: SensitivityProfile, units) -> dict[str, dict]:
    """Every model to evaluate, in priority order: name -> assignment [(unit, candidate)], bytes, bpw.

    ``full-notern`` (the full palette without ternary) is added where its plan differs from both others.
    """
    out: dict[str, dict] = {}
    numel = sum(u.shape[0] * u.shape[1] for u in units)
    for bpw in (*BUDGETS, *FRONTIER):
        for label, prof in (("foundation", foundation), ("full", full)):
            if label == "full" and bpw in FRONTIER:
                continue
            out[f"{label} @ {bpw:g}"] = {"plan": make_plan(prof, Budget(target_bpw=bpw), solver="milp")}
    notern = SensitivityProfile(
        table=full.table[~full.table["candidate"].str.startswith("tern")].reset_index(drop=True),
        meta=dict(full.meta, palette=[c for c in full.meta["palette"] if not c.startswith("tern")]),
    )
    for bpw in BUDGETS:
        plan = make_plan(notern, Budget(target_bpw=bpw), solver="milp")
        same = (out[f"{lb} @ {bpw:g}"]["plan"].assignment for lb in ("full", "foundation"))
        if plan.assignment not in same:
            out[f"full-notern @ {bpw:g}"] = {"plan": plan}
    for cand in UNIFORM:
        if cand in full.meta["palette"]:
            out[f"uniform {cand}"] = {"plan": uniform_plan(full, cand)}
    for cand in (*ACT_FIRST, *(c for c in ACT if c not in ACT_FIRST)):  # last: slow on the CPU
        nbytes = sum(Candidate.parse(cand).nbytes(u.shape) for u in units)
        out[f"act {cand}"] = {"assignment": [(u.name, cand) for u in units], "nbytes": nbytes}
    for e in out.values():
        if "plan" in e:
            plan = e["plan"]
            e["assignment"] = [(c.unit, c.candidate) for c in plan.assignment]
            e["nbytes"] = plan.nbytes
        e["bpw"] = e["nbytes"] * 8 / numel
    return out


def evaluate(loaded, stats, todo: dict[str, dict], args, results: dict, out: Path, log) -> None:
    """Perplexity of each entry, ``args.eval_batch`` models at a time; weights quantized once, shared."""
    uses = Counter(pair for e in todo.values() for pair in e["assignment"])
    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None, int, int]] = {}
    shared = {id(t): t for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    names = list(todo)
    settings = EvalSettings(max_tokens=args.eval_tokens, stride=args.stride)
    for i in range(0, len(names), args.eval_batch):
        models = {}
        for name in names[i : i + args.eval_batch]:
            model = copy.deepcopy(loaded.model, memo=dict(shared))  # deepcopy fills its memo: copy it
            stored = 0
            for unit, cand in todo[name]["assignment"]:
                if (unit, cand) not in cache:
                    w = loaded.model.get_submodule(unit).weight.detach().float()  # (out, in)
                    c = Candidate.parse(cand)
                    h = stats.hessians[unit].to(w.device)
                    q = quantize(w, c, hessian=h, unit=unit, n_tokens=stats.n_tokens)
                    idx = getattr(q, "stored", {}).get("outlier_idx")
                    cache[(unit, cand)] = (q.dequantize(), idx, act_bits(c), q.nbytes)
                weight, idx, bits, nbytes = cache[(unit, cand)]
                stored += nbytes
                parent, leaf = get_submodule_parent(model, unit)
                setattr(parent, leaf, DequantizedLinear(weight, getattr(parent, leaf).bias, idx, bits))
                uses[(unit, cand)] -= 1
                if not uses[(unit, cand)]:
                    del cache[(unit, cand)]
            if stored != todo[name]["nbytes"]:
                raise RuntimeError(f"{name}: stored {stored} bytes, plan counts {todo[name]['nbytes']}")
            models[name] = model
        res = run_eval(loaded, models, "wiki", settings)
        results["float reference"] = {"ppl": res["reference"].perplexity, "bpw": None}
        for name in models:
            results[name] = {"ppl": res[name].perplexity, "kl": res[name].kl, "bpw": todo[name]["bpw"]}
        (out / "results.json").write_text(json.dumps(results, indent=2))
        log(f"evaluated {list(models)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-palette-s3"))
    parser.add_argument(
        "--metric",
        choices=("fisher", "hessian", "fisher_scaled"),
        default="fisher",
        help="the error the plans are made with (fisher_scaled: the proxy scaled per unit by the Fisher)",
    )
    parser.add_argument(
        "--foundation",
        type=Path,
        default=None,
        help="default: runs/bench-quality/profile-METRIC.parquet (fisher_scaled: the hessian one)",
    )
    parser.add_argument(
        "--phase", choices=("score", "eval", "report", "predict", "act-units", "all"), default="all"
    )
    parser.add_argument("--rows", type=Path, default=None, help="scored rows to use (default: the output's)")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--stride", type=int, default=512, help="window stride (context 512)")
    parser.add_argument("--eval-batch", type=int, default=3, help="models evaluated together")
    parser.add_argument("--max-models", type=int, default=0, help="evaluate at most this many now (0: all)")
    parser.add_argument("--fast", action="store_true", help="score only FAST_NEW (see above)")
    parser.add_argument(
        "--only",
        default="",
        help="evaluate only these entries, in this order (comma-separated fnmatch patterns)",
    )
    parser.add_argument("--layers", type=int, default=0, help="only the units of the first N layers (0: all)")
    parser.add_argument("--device", default="cpu", help="torch device for scoring, quantizing and evaluation")
    args = parser.parse_args()
    out = args.output
    (out / "plans").mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    def progress(step: str, done: int, total: int) -> None:
        if done == total or done % 30 == 0:
            log(f"{step} {done}/{total}")

    loaded = load_model("smollm2-135m", device=args.device)
    units = discover_units(loaded.model)
    stats = get_calibration(loaded, units, CalibrationSettings(), progress)
    if args.phase == "act-units":
        act_units(loaded, [u for u in units if int(u.name.split(".")[2]) in (0, 15, 29)], stats, out, log)
        return
    if args.layers:  # a sub-problem: the allocator sees only these units (bpw over their weights)
        units = tuple(u for u in units if int(u.name.split(".")[2]) < args.layers)
    base_metric = "hessian" if args.metric == "fisher_scaled" else args.metric
    foundation_path = args.foundation or Path(f"runs/bench-quality/profile-{base_metric}.parquet")
    foundation = SensitivityProfile.load(foundation_path)
    if foundation.model_hash != loaded.model_hash or foundation.meta.get("metric", "hessian") != base_metric:
        raise SystemExit(
            f"{foundation_path} is not a {base_metric} profile of this model: "
            "run benchmarks/quality_smollm2.py"
        )
    unit_scale = None
    if args.metric == "fisher_scaled":  # the proxy's ranking inside a unit, the Fisher's weight per unit
        fisher = SensitivityProfile.load("runs/bench-quality/profile-fisher.parquet")
        unit_scale = unit_scales(foundation, fisher)
        foundation = fisher_scaled(foundation, fisher)
    keep = foundation.table["unit"].isin([u.name for u in units])
    foundation = SensitivityProfile(table=foundation.table[keep].reset_index(drop=True), meta=foundation.meta)
    rows_path = out / "palette_rows.parquet"
    if args.phase in ("score", "all"):
        names = FAST_NEW + RTN_REFERENCE if args.fast else NEW + REFERENCE
        # the same Fisher diagonals as the foundation profile (same windows, same batches)
        fisher = _metric_statistics(loaded, units, CalibrationSettings(), "fisher", progress)["fisher"]
        rows = score_rows(loaded, units, stats, names, progress, rows_path, fisher)
        log(f"scored {len(names)} candidates on {len(units)} units")
        if args.phase == "score":
            return
    rows = pd.read_parquet(args.rows or rows_path)
    rows = rows[rows["unit"].isin([u.name for u in units])]
    if len(set(rows["unit"])) != len(units):
        raise SystemExit(
            f"{rows_path} covers {len(set(rows['unit']))} of {len(units)} units: run --phase score"
        )
    scored = rows.assign(error=rows["fisher_error"]) if args.metric == "fisher" else rows
    if unit_scale is not None:
        scored = scaled_errors(rows, unit_scale)
    check_against_foundation(scored, foundation, log)
    per_candidate = rows.groupby("candidate")["unit"].nunique()
    fits = {n: sum(Candidate.parse(n).supports(u.shape) for u in units) for n in NEW}
    new = [n for n in NEW if fits[n] and per_candidate.get(n, 0) == fits[n]]  # scored on every unit it fits
    full = SensitivityProfile(
        table=pd.concat(
            [foundation.table, scored[scored["candidate"].isin(new)][foundation.table.columns]],
            ignore_index=True,
        ),
        meta=dict(foundation.meta, palette=[*foundation.meta["palette"], *new]),
    )
    if args.phase == "predict":
        predict(foundation, full, out, log)
        return
    todo = entries(foundation, full, units)
    for name, e in todo.items():
        if "plan" in e:
            e["plan"].save(out / "plans" / f"{name.replace(' @ ', '-').replace(' ', '_')}.json")
    log(f"{len(todo)} plans and recipes")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.phase in ("eval", "all"):
        pending = {n: e for n, e in todo.items() if n not in results}
        if args.only:
            patterns = args.only.split(",")
            pending = {n: pending[n] for p in patterns for n in pending if fnmatch(n, p)}
        if args.max_models:
            pending = dict(list(pending.items())[: args.max_models])
        evaluate(loaded, stats, pending, args, results, out, log)
    write_report(out, args, todo, results, scheme_table(rows, foundation, args.metric), units, started)


def predict(foundation: SensitivityProfile, full: SensitivityProfile, out: Path, log) -> None:
    """Predicted errors only: each budget's plans, and the foundation bpw reaching the full plan's error."""
    curve = []
    for bpw in np.arange(2.25, 5.01, 0.125):
        p = make_plan(foundation, Budget(target_bpw=float(bpw)), solver="milp")
        curve.append((p.bpw, p.predicted_error))
    lines = [
        "| budget bpw | foundation: bpw / pred. error | full: bpw / pred. error | full plan's kinds "
        "| foundation bpw at full's error | predicted gain |",
        "| ---: | --- | --- | --- | ---: | ---: |",
    ]
    for bpw in BUDGETS:
        f, g = (make_plan(p, Budget(target_bpw=bpw), solver="milp") for p in (foundation, full))
        kinds = Counter(
            Candidate.parse(c.candidate).kind.value + ("-o" if "-o" in c.candidate else "")
            for c in g.assignment
        )
        mix = ", ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
        eq = equal_ppl_bpw(curve, g.predicted_error)
        cells = f"{eq:.3f} | {eq - g.bpw:+.3f}" if eq is not None else "outside | n/a"
        lines.append(
            f"| {bpw:g} | {f.bpw:.3f} / {f.predicted_error:.4g} | {g.bpw:.3f} / {g.predicted_error:.4g} "
            f"| {mix} | {cells} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "palette_predicted.md").write_text(text)
    log("predicted:\n" + text)


def act_units(loaded, units, stats, out: Path, log) -> None:
    """W8A8 / W4A4 per unit on 512 real calibration tokens: output error ||WX - Ŵ Q(X)||² / ||WX||²."""
    from bitalloc.data.corpora import Split, load_corpus
    from bitalloc.data.windows import token_stream
    from bitalloc.quantizers.activations import output_error

    ids = token_stream(loaded.tokenizer, load_corpus("wiki", Split.CALIBRATION), max_tokens=512)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        loaded.model.get_submodule(u.name).register_forward_hook(
            lambda m, a, o, name=u.name: inputs.__setitem__(name, a[0].reshape(-1, a[0].shape[-1]).float())
        )
        for u in units
    ]
    with torch.inference_mode():
        loaded.model(input_ids=ids.reshape(1, -1), use_cache=False)
    for h in hooks:
        h.remove()
    table = {}
    for u in units:
        w, x = (
            loaded.model.get_submodule(u.name).weight.detach().float(),
            inputs[u.name],
        )  # (out, in), (t, in)
        signal = float((x @ w.T).pow(2).sum() / x.shape[0])
        qs = quantize_batch(w, [Candidate.parse(c) for c in ACT], stats.hessians[u.name].to(w.device), u.name)
        table[u.name] = [output_error(w, q, x) / signal for q in qs]
        log(f"act-units {u.name}")
    lines = [f"| unit | {' | '.join(ACT)} |", "| --- |" + " ---: |" * len(ACT)]
    lines += [f"| {n} | {' | '.join(f'{e:.2e}' for e in errs)} |" for n, errs in table.items()]
    mean = np.exp(np.log(np.array(list(table.values()))).mean(axis=0))
    lines.append(f"| geometric mean | {' | '.join(f'{e:.2e}' for e in mean)} |")
    text = "\n".join(lines) + "\n"
    (out / "act_units.md").write_text(text)
    print(text, flush=True)


def scheme_table(rows: pd.DataFrame, foundation: SensitivityProfile, metric: str) -> pd.DataFrame:
    """Per candidate: mean relative weight error, summed proxy and Fisher errors and bpw over all units."""
    scheme = (
        pd.concat([rows, _foundation_rows(foundation, rows, metric)], ignore_index=True)
        .groupby("candidate")
        .agg(
            rel_weight_error=("rel_weight_error", "mean"),
            proxy=("error", lambda e: e.sum(min_count=1)),
            fisher=("fisher_error", lambda e: e.sum(min_count=1)),
            nbytes=("nbytes", "sum"),
        )
    )
    first = rows.drop_duplicates("unit")
    scheme["bpw"] = scheme["nbytes"] * 8 / float((first["rows"] * first["cols"]).sum())
    return scheme


def _ppl(results: dict, name: str) -> str:
    r = results.get(name)
    return f"{r['ppl']:.2f}" if r else "not run"


def _machine(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({platform.machine()} host)"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_report(out: Path, args, todo, results, scheme, units, started) -> None:
    """Markdown tables (palette.md) from whatever has been evaluated so far."""
    ref = results.get("float reference", {}).get("ppl", float("nan"))
    lines = [
        f"Machine: {_machine(args.device)}, torch {torch.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; calibration 32x512 wiki tokens; plans by the "
        f"{args.metric} metric; wiki-test ppl on "
        f"{args.eval_tokens} tokens (context 512, stride {args.stride}); units: "
        f"{'first ' + str(args.layers) + ' layers' if args.layers else 'all 210'}; "
        f"this run {time.time() - started:.0f} s.",
        "",
        f"Float reference perplexity: {ref:.3f}",
        "",
        "| candidate | bpw | mean rel. weight error | proxy Σ tr(ΔW H ΔWᵀ) | Fisher Σ F ΔW² "
        "| uniform wiki ppl |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in scheme.sort_values("bpw").iterrows():
        ppl = _ppl(results, f"uniform {name}")
        lines.append(
            f"| {name} | {r.bpw:.3f} | {r.rel_weight_error:.4f} | {r.proxy:.4g} | {r.fisher:.4g} | {ppl} |"
        )
    shapes = [u.shape for u in units]
    lines += [
        "",
        f"| recipe (all units) | weight bpw | wiki ppl | KL | latency Σ µs, decode (1 token) | "
        f"latency Σ µs, prefill ({PREFILL_TOKENS} tokens) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cand in ACT:
        e = todo.get(f"act {cand}")
        if e is None:
            continue
        nbytes = np.array([[Candidate.parse(cand).nbytes(s)] for s in shapes])
        dec, pre = (float(latency_table([cand], shapes, nbytes, t).sum()) for t in (1, PREFILL_TOKENS))
        r = results.get(f"act {cand}")
        kl = f"{r['kl']:.4f}" if r else "not run"
        lines.append(
            f"| {cand} | {e['bpw']:.3f} | {_ppl(results, f'act {cand}')} | {kl} | {dec:.0f} | {pre:.0f} |"
        )
    labels = ("foundation", "full", "full-notern")
    curves = {
        lb: [(r["bpw"], r["ppl"]) for n, r in results.items() if n.startswith(f"{lb} @")] for lb in labels
    }
    lines += [
        "",
        "| budget bpw | foundation: bpw / pred. error / ppl | palette | bpw / pred. error / ppl "
        "| plan's kinds | foundation bpw at its ppl | gain | its bpw at foundation's ppl | gain |",
        "| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for bpw, label in itertools.product(BUDGETS, labels[1:]):
        if f"{label} @ {bpw:g}" not in todo:
            continue
        f, g = todo[f"foundation @ {bpw:g}"]["plan"], todo[f"{label} @ {bpw:g}"]["plan"]
        fr, gr = results.get(f"foundation @ {bpw:g}"), results.get(f"{label} @ {bpw:g}")
        kinds = Counter(
            Candidate.parse(c.candidate).kind.value + ("-o" if "-o" in c.candidate else "")
            for c in g.assignment
        )
        mix = ", ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))
        cells = []
        for r, plan, other, sign in ((gr, g, "foundation", 1), (fr, f, label, -1)):
            eq = equal_ppl_bpw(curves[other], r["ppl"]) if r and len(curves[other]) >= 2 else None
            cells += [f"{eq:.3f}", f"{sign * (eq - plan.bpw):+.3f}"] if eq is not None else ["outside", "n/a"]
        lines.append(
            f"| {bpw:g} | {f.bpw:.3f} / {f.predicted_error:.4g} / {_ppl(results, f'foundation @ {bpw:g}')} "
            f"| {label} | {g.bpw:.3f} / {g.predicted_error:.4g} / {_ppl(results, f'{label} @ {bpw:g}')} "
            f"| {mix} | {' | '.join(cells)} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "palette.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
