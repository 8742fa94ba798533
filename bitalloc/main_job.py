"""The main job (`bitalloc run`): profile, plan, quantize, evaluate, and compare with uniform recipes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bitalloc.allocator.plan import Plan, uniform_plan
from bitalloc.allocator.problem import Budget
from bitalloc.evaluate.perplexity import EvalResult
from bitalloc.models.loading import load_model
from bitalloc.pipeline import (
    CalibrationSettings,
    EvalSettings,
    Progress,
    make_plan,
    run_eval,
    run_profile,
    save_json,
)
from bitalloc.sensitivity.profile import SensitivityProfile

EVAL_CORPORA = ("wiki", "shakespeare")
HEADER = ("model", "bpw", "model MB", *(f"{c} {m}" for c in EVAL_CORPORA for m in ("ppl", "KL")))


@dataclass(frozen=True)
class MainJob:
    """What `bitalloc run` does: its defaults run on the bundled model and corpus."""

    model: str = "smollm2-135m"
    corpus: str = "wiki"
    target_bpw: float = 3.5
    baselines: tuple[str, ...] = ("rtn-w3g64-sym", "gptq-w3g64-sym", "rtn-w4g64-sym", "gptq-w4g64-sym")
    output: Path = Path("runs/main")
    windows: int = 32
    eval_tokens: int = 8192
    metric: str = "fisher"  # the best predictor of measured loss (BENCHMARKS.md, metric study)


@dataclass(frozen=True)
class Row:
    """One line of the report: a model variant, its size and its quality per corpus."""

    name: str
    bpw: float | None
    model_bytes: int | None
    results: dict[str, EvalResult]


@dataclass(frozen=True)
class Report:
    """The rows of the main job's comparison."""

    rows: tuple[Row, ...]

    def cells(self) -> list[list[str]]:
        """One list of formatted cells per row, in the order of ``HEADER``."""
        out = []
        for row in self.rows:
            cells = [row.name, "-" if row.bpw is None else f"{row.bpw:.3f}"]
            cells.append("-" if row.model_bytes is None else f"{row.model_bytes / 1e6:.2f}")
            for corpus in EVAL_CORPORA:
                r = row.results[corpus]
                cells += [f"{r.perplexity:.3f}", f"{r.kl:.4f}"]
            out.append(cells)
        return out

    def table(self) -> Table:
        """A rich table: perplexity and KL on each corpus."""
        table = Table(*HEADER)
        for cells in self.cells():
            table.add_row(*cells)
        return table

    def markdown(self) -> str:
        """The same table as Markdown."""
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.cells()]
        return "\n".join(lines) + "\n"


def evaluate_plans(
    loaded, plans: dict[str, Plan], settings: EvalSettings, progress: Progress, *, chunk: int = 6
) -> Report:
    """Quantize every plan, evaluate them ``chunk`` at a time with the reference in lockstep, and tabulate.

    Each model holds its units' dequantized weights (the numbers the packed forward computes on every
    call, computed once); a (unit, candidate) pair shared by several plans is quantized once.
    """
    from bitalloc.study.materialize import UnitCache

    cache = UnitCache(max_bytes=4_000_000_000)
    cache.prefill_gptq(loaded, plans.values(), progress)
    names = list(plans)
    results: dict[str, dict] = {c: {} for c in EVAL_CORPORA}
    for start in range(0, len(names), chunk):
        models = {}
        for n in names[start : start + chunk]:
            models[n] = cache.build(loaded, plans[n])
            progress("quantize", len(models) + start, len(names))
        for c in EVAL_CORPORA:
            results[c].update(run_eval(loaded, models, c, settings, progress))
        del models
    rows = [Row("float reference", None, None, {c: results[c]["reference"] for c in EVAL_CORPORA})]
    for name, p in plans.items():
        rows.append(Row(name, p.bpw, p.model_bytes, {c: results[c][name] for c in EVAL_CORPORA}))
    return Report(tuple(rows))


def run_main_job(job: MainJob, progress: Progress) -> Report:
    """Profile the model (reusing a saved profile of the same model and settings), plan, evaluate."""
    job.output.mkdir(parents=True, exist_ok=True)
    loaded = load_model(job.model)
    settings = CalibrationSettings(corpus=job.corpus, n_windows=job.windows)
    profile_path = job.output / "profile.parquet"
    profile = None
    if profile_path.exists():
        saved = SensitivityProfile.load(profile_path)
        same_metric = saved.meta.get("metric", "hessian") == job.metric
        if (
            saved.model_hash == loaded.model_hash
            and saved.meta.get("calibration") == vars(settings)
            and same_metric
        ):
            profile = saved
    if profile is None:
        profile = run_profile(loaded, settings, progress=progress, metric=job.metric)
        profile.save(profile_path)
    mixed = make_plan(profile, Budget(target_bpw=job.target_bpw))
    mixed.save(job.output / "plan.json")
    plans = {name: uniform_plan(profile, name) for name in job.baselines}
    plans[f"bitalloc mixed @ {job.target_bpw:g} bpw"] = mixed
    report = evaluate_plans(loaded, plans, EvalSettings(max_tokens=job.eval_tokens), progress)
    (job.output / "report.md").write_text(report.markdown())
    save_json(
        job.output / "report.json",
        {
            "rows": [
                {
                    "name": r.name,
                    "bpw": r.bpw,
                    "model_bytes": r.model_bytes,
                    "results": {c: vars(v) for c, v in r.results.items()},
                }
                for r in report.rows
            ]
        },
    )
    return report
