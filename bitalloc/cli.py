"""Command line: thin commands over bitalloc.pipeline; the one place errors become exit codes."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.service.cli import register as register_service_commands
from bitalloc.study.cli import study_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mixed-precision bit allocation for LLMs.")
console = Console(stderr=True)

app.add_typer(study_app, name="study")


@contextmanager
def progress_bar():
    """A rich progress display and a callback (step, done, total) that drives one bar per step."""
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks: dict[str, int] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield update


def parse_range(text: str) -> list[float]:
    """'2.5:4.5:0.25' -> [2.5, 2.75, ..., 4.5] (inclusive); '3,3.5' -> [3.0, 3.5]."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            count = round((stop - start) / step) + 1
            return [round(start + i * step, 10) for i in range(count)]
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise InvalidInput(
            f"not a range: {text!r}; write START:STOP:STEP (e.g. 2.5:4.5:0.25) or a,b,c"
        ) from None


Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="bundled name, HF folder, .gguf file or hub id; append +fold-norms to fold the RMSNorm weights "
        "into the next linears (weightless norms run inside the decoder's GEMVs)",
    ),
]


METRIC_HELP = (
    "sensitivity metric: fisher (default, the best predictor of measured loss), hessian, fisher_scaled "
    "(the proxy weighted per unit by the Fisher), awq, slim, weight_mse or higgs"
)


PALETTE_HELP = (
    "candidates, comma separated; 'default' = the 72 RTN/GPTQ formats, e.g. "
    "'default,lutgptq-w2g192-asym,lutgptq-w3g192-asym,gptqact-w3g64-asym'"
)
SCORING_HELP = (
    "exact (quantize every candidate) or estimate (RTN/GPTQ errors in closed form, no GPTQ run; "
    "metrics hessian and fisher_scaled)"
)


@app.command()
def profile(
    output: Annotated[Path, typer.Option("--output", "-o", help="profile .parquet (a .json goes beside it)")],
    model: Model = "smollm2-135m",
    corpus: Annotated[str, typer.Option(help="calibration corpus: wiki or a text file")] = "wiki",
    windows: Annotated[int, typer.Option(help="calibration windows")] = 32,
    seq_len: Annotated[int, typer.Option(help="tokens per calibration window")] = 512,
    seed: int = 0,
    streaming: Annotated[bool, typer.Option(help="calibrate one decoder layer at a time")] = False,
    metric: Annotated[str, typer.Option(help=METRIC_HELP)] = "fisher",
    scoring: Annotated[str, typer.Option(help=SCORING_HELP)] = "exact",
    palette: Annotated[str, typer.Option(help=PALETTE_HELP)] = "default",
) -> None:
    """Calibrate MODEL on CORPUS and score every unit x candidate of the palette."""
    from bitalloc.models.loading import load_model
    from bitalloc.pipeline import CalibrationSettings, run_profile
    from bitalloc.quantizers.candidate import parse_palette

    candidates = parse_palette(palette)  # before loading: a bad name fails at once
    with progress_bar() as update:
        loaded = load_model(model)
        settings = CalibrationSettings(corpus, windows, seq_len, seed)
        prof = run_profile(
            loaded,
            settings,
            palette=candidates,
            progress=update,
            streaming=streaming,
            metric=metric,
            scoring=scoring,
        )
    path = prof.save(output)
    console.print(f"profile: {len(prof.units())} units x {len(prof.meta['palette'])} candidates -> {path}")


SOLVER_HELP = "auto, milp, lagrange, pulp, pulp:NAME (any solver PuLP drives), cvxpy or baq"


@app.command()
def plan(
    profile_path: Annotated[Path, typer.Argument(help="profile .parquet")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("plan.json"),
    target_bpw: Annotated[
        float | None, typer.Option(help="average bits per weight over quantized units")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option(help="total bytes of the quantized units (with --target-bpw: the smaller)")
    ] = None,
    max_latency: Annotated[float | None, typer.Option(help="summed latency of the units, in us")] = None,
    latency_table: Annotated[
        str,
        typer.Option(
            help="measured (shipped H100 table), measured-h200, measured-h200_decoder (timed inside the "
            "decode step, batch 1), analytic, or a latency CSV path"
        ),
    ] = "measured",
    latency_batch: Annotated[int, typer.Option(help="batch size the latency table is read at")] = 1,
    max_active_bytes: Annotated[
        float | None, typer.Option(help="bytes weighted by routing frequency (MoE experts)")
    ] = None,
    routing: Annotated[
        Path | None, typer.Option(help="unit,frequency CSV for --max-active-bytes (default: all 1)")
    ] = None,
    min_bits: Annotated[
        list[str] | None, typer.Option(help="UNIT=BITS, at least these code bits (glob UNIT; repeatable)")
    ] = None,
    max_bits: Annotated[
        list[str] | None, typer.Option(help="UNIT=BITS, at most these code bits (glob UNIT; repeatable)")
    ] = None,
    pin: Annotated[
        list[str] | None, typer.Option(help="UNIT=CANDIDATE, force a candidate (glob UNIT; repeatable)")
    ] = None,
    solver: Annotated[str, typer.Option(help=SOLVER_HELP)] = "auto",
    explain: Annotated[Path | None, typer.Option(help="write why each unit got its bits to this CSV")] = None,
    refine: Annotated[
        bool, typer.Option(help="closed loop: refit the errors to KL measured on --model, re-solve")
    ] = False,
    model: Model = "smollm2-135m",
    refine_windows: Annotated[int, typer.Option(help="calibration windows the closed loop measures")] = 2,
    refine_seq_len: Annotated[int, typer.Option(help="tokens per closed-loop window")] = 512,
) -> None:
    """Solve for the best candidate per unit under every limit given at once (bpw, bytes, latency, active
    bytes) and the per-unit rules; --target-bpw and --max-bytes together: the smaller byte limit wins."""
    from bitalloc.allocator.options import PlanRequest, make_budget, make_plan_with
    from bitalloc.sensitivity.profile import SensitivityProfile

    budget = make_budget(
        target_bpw=target_bpw,
        max_bytes=max_bytes,
        max_latency=max_latency,
        max_active_bytes=max_active_bytes,
        min_bits=min_bits,
        max_bits=max_bits,
        pin=pin,
    )
    if refine and (max_latency is not None or max_active_bytes is not None or explain is not None):
        raise InvalidInput("--refine works on byte budgets (--target-bpw, --max-bytes) without --explain")
    request = PlanRequest(budget, solver, latency_table, latency_batch, routing)
    profile = SensitivityProfile.load(profile_path)
    result, table = make_plan_with(profile, request, explain=explain is not None)
    if refine:
        from bitalloc.allocator.refine import RefineSettings, refine_plan
        from bitalloc.models.loading import load_model

        settings = RefineSettings(windows=refine_windows, seq_len=refine_seq_len)
        result, _ = refine_plan(profile, budget, load_model(model), settings, solver=solver)
    result.save(output)
    if table is not None and explain is not None:
        table.to_csv(explain, index=False)
    s = result.solver
    console.print(
        f"plan: {result.bpw:.4f} bpw, {result.nbytes} bytes, predicted error {result.predicted_error:.6g}, "
        f"solver {s['name']} ({s['status']}, gap {s['gap']:.2e}) -> {output}"
        + ("" if explain is None else f", explanation -> {explain}")
    )


@app.command()
def frontier(
    profile_path: Annotated[Path, typer.Argument(help="profile .parquet")],
    bpw: Annotated[str, typer.Option(help="START:STOP:STEP or a,b,c")] = "2.5:4.5:0.25",
    max_bytes: Annotated[
        int | None, typer.Option(help="also cap every point at this many bytes (the smaller limit wins)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("frontier.csv"),
    plot: Annotated[Path | None, typer.Option(help="also draw the frontier to this PNG")] = None,
    solver: Annotated[str, typer.Option(help=SOLVER_HELP)] = "lagrange",
    exact: Annotated[bool, typer.Option("--exact", help="solve every budget exactly (MILP)")] = False,
    hull: Annotated[
        bool, typer.Option("--hull", help="every certified hull breakpoint instead of --bpw (gap 0 each)")
    ] = False,
    max_points: Annotated[int | None, typer.Option(help="with --hull: at most this many points")] = None,
) -> None:
    """Error against size for many budgets at once (--exact: MILP per budget; --hull: whole hull)."""
    from bitalloc.allocator.frontier import frontier as compute_frontier
    from bitalloc.allocator.frontier import hull_frontier, plot_frontier
    from bitalloc.allocator.problem import Budget
    from bitalloc.allocator.solve import check_solver
    from bitalloc.sensitivity.profile import SensitivityProfile

    if exact and hull:
        raise InvalidInput("give --exact or --hull, not both")
    if exact:
        if solver not in ("lagrange", "milp"):
            raise InvalidInput(f"--exact solves with milp; drop --solver {solver}")
        solver = "milp"
    check_solver(solver)
    if max_points is not None and (not hull or max_points < 2):
        raise InvalidInput("--max-points needs --hull and at least 2 points")
    problem = SensitivityProfile.load(profile_path).to_problem()
    if hull:
        df = hull_frontier(problem, max_points=max_points)
        if max_bytes is not None:
            df = df[df["bytes"] <= max_bytes].reset_index(drop=True)
    else:
        budgets = [Budget(target_bpw=b, max_bytes=max_bytes) for b in parse_range(bpw)]
        df = compute_frontier(problem, budgets, solver=solver)
    df.to_csv(output, index=False)
    if plot is not None:
        if hull:
            df = df.assign(budget_bytes=df["bytes"], budget_bpw=df["bpw"])
        plot_frontier(df, plot)
    console.print(df.to_string(index=False))


@app.command()
def apply(
    plan_path: Annotated[Path, typer.Option("--plan", help="plan.json")],
    output: Annotated[Path, typer.Option("--output", "-o", help="empty folder for the quantized model")],
    model: Model = "smollm2-135m",
) -> None:
    """Quantize MODEL as the plan says and write packed weights, plan.json and config to OUTPUT."""
    from bitalloc.allocator.plan import Plan
    from bitalloc.models.loading import load_model
    from bitalloc.pipeline import quantize_model
    from bitalloc.quantizers.apply import save_quantized

    chosen = Plan.load(plan_path)
    if (output / "model.safetensors").exists():
        raise InvalidInput(f"{output} already holds a model; choose an empty folder")
    with progress_bar() as update:
        loaded = load_model(model)
        quantized = quantize_model(loaded, chosen, update)
    written = save_quantized(quantized, chosen, output, tokenizer=loaded.tokenizer)
    console.print(f"wrote {written} bytes of tensors ({chosen.bpw:.4f} bpw over quantized units) to {output}")


@app.command()
def generate(
    model_dir: Annotated[Path, typer.Option("--model-dir", help="a folder written by `bitalloc apply`")],
    prompt: Annotated[str, typer.Option(help="text to continue")] = "The capital of France is",
    tokens: Annotated[int, typer.Option(help="new tokens, chosen greedily")] = 32,
) -> None:
    """Greedy decoding of a quantized model on the kernels (LlamaDecoder, one CUDA graph per step); without a
    GPU the kernels run under the Triton interpreter (slow: a check of the outputs, not a runtime)."""
    import os
    import time

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # before the kernels are imported: Triton reads it when it compiles a kernel
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from transformers import AutoTokenizer

    from bitalloc.quantizers.load import load_quantized
    from bitalloc.runtime.llama_decoder import LlamaDecoder

    if tokens < 1:
        raise InvalidInput(f"--tokens must be at least 1, got {tokens}")
    model, chosen = load_quantized(model_dir, device="cuda" if on_gpu else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise InvalidInput(
            f"{model_dir} holds no tokenizer (`bitalloc apply` saves one beside the model)"
        ) from err
    ids = tokenizer(prompt).input_ids
    decoder = LlamaDecoder(model, max_len=len(ids) + tokens)
    if on_gpu:
        decoder.capture()
    start = time.perf_counter()
    new = decoder.generate(ids, tokens)
    seconds = time.perf_counter() - start
    Console().print(escape(prompt) + f"[bold]{escape(tokenizer.decode(new))}[/bold]")
    where = "GPU kernels, CUDA graph" if on_gpu else "Triton interpreter on the CPU"
    console.print(
        f"{len(ids)} prompt tokens in one prefill pass and {tokens - 1} decode steps in {seconds:.2f} s "
        f"({tokens / seconds:.1f} new tokens/s, {where}); plan {chosen.bpw:.3f} bpw"
    )


@app.command(name="eval")
def eval_(
    model: Model = "smollm2-135m",
    plan_path: Annotated[
        Path | None, typer.Option("--plan", help="evaluate this plan applied to MODEL")
    ] = None,
    corpus: Annotated[list[str] | None, typer.Option(help="evaluation corpora (repeatable)")] = None,
    max_tokens: int = 16384,
    context: int = 512,
    stride: int = 256,
) -> None:
    """Perplexity (and KL to the unquantized model when --plan is given) on held-out text."""
    from bitalloc.allocator.plan import Plan
    from bitalloc.models.loading import load_model
    from bitalloc.pipeline import EvalSettings, quantize_model, run_eval

    settings = EvalSettings(max_tokens, context, stride)
    with progress_bar() as update:
        loaded = load_model(model)
        models = {} if plan_path is None else {"plan": quantize_model(loaded, Plan.load(plan_path), update)}
        results = {
            c: run_eval(loaded, models, c, settings, update) for c in corpus or ["wiki", "shakespeare"]
        }
    table = Table("corpus", "model", "perplexity", "KL (nats/token)", "tokens")
    for c, by_model in results.items():
        for name, r in by_model.items():
            table.add_row(c, name, f"{r.perplexity:.3f}", f"{r.kl:.5f}", str(r.tokens))
    Console().print(table)


@app.command()
def run(
    model: Model = "smollm2-135m",
    corpus: str = "wiki",
    target_bpw: Annotated[float, typer.Option(help="budget of the mixed plan")] = 3.5,
    baselines: Annotated[str, typer.Option(help="uniform recipes to compare, comma separated")] = (
        "rtn-w3g64-sym,gptq-w3g64-sym,rtn-w4g64-sym,gptq-w4g64-sym"
    ),
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("runs/main"),
    windows: int = 32,
    eval_tokens: int = 8192,
    metric: Annotated[str, typer.Option(help=METRIC_HELP)] = "fisher",
) -> None:
    """The main job: profile, plan, quantize and evaluate; print the comparison table."""
    from bitalloc.main_job import MainJob, run_main_job

    job = MainJob(
        model, corpus, target_bpw, tuple(baselines.split(",")), output, windows, eval_tokens, metric
    )
    with progress_bar() as update:
        report = run_main_job(job, update)
    Console().print(report.table())
    console.print(f"plan -> {output / 'plan.json'}, report -> {output / 'report.md'}")


@app.command()
def export(
    plan_path: Annotated[Path, typer.Option("--plan", help="plan JSON to export")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="compressed-tensors | compressed-tensors-vllm | gguf | gptq-dynamic"),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="a new or empty folder")],
    model: Model = "smollm2-135m",
    template: Annotated[
        Path | None, typer.Option(help="GGUF whose tokenizer the GGUF export copies (default: the model's)")
    ] = None,
) -> None:
    """Write a plan for a runtime: compressed-tensors, GGUF (+ tensor-type file, imatrix), GPTQ dynamic."""
    from bitalloc.export.cli_export import run_export

    with progress_bar() as update:
        message = run_export(plan_path, fmt, output, model=model, template=template, progress=update)
    console.print(message)


register_service_commands(app)


def main() -> None:
    """Entry point that turns domain errors into exit code 2 with one clear line."""
    try:
        app()
    except BitallocError as exc:
        message = escape(f"{type(exc).__name__}: {exc}")
        console.print(f"[red]error:[/red] {message}", soft_wrap=True)
        sys.exit(2)
