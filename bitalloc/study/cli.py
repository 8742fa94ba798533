"""`bitalloc study run|worker|show`: thin commands over bitalloc.study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

study_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Optuna studies over plan settings.")
console = Console(stderr=True)

Definition = Annotated[Path, typer.Argument(help="studies/NAME.toml")]
Storage = Annotated[
    str | None, typer.Option(help="RDB URL (e.g. postgresql://...); default: the definition's")
]


def _resolve(name: Path) -> Path:
    """'NAME' -> studies/NAME.toml when that exists."""
    if not name.exists() and (Path("studies") / f"{name}.toml").exists():
        return Path("studies") / f"{name}.toml"
    return name


def _log_trial(trial, seconds: float) -> None:
    values = "" if trial.values is None else ", ".join(f"{v:.6g}" for v in trial.values)
    console.print(f"trial {trial.number} {trial.state.name} [{values}] {seconds:.0f} s {trial.params}")


@study_app.command()
def run(
    definition: Definition,
    storage: Storage = None,
    n_trials: int | None = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="start no new trial after this many minutes (resume later)")
    ] = None,
) -> None:
    """Run (or resume) the study until it holds its n_trials finished trials; then write its report."""
    from bitalloc.study.definition import load_definition
    from bitalloc.study.report import write_report
    from bitalloc.study.runner import open_study, run_study

    d = load_definition(_resolve(definition))
    if n_trials is not None:
        from dataclasses import replace

        d = replace(d, n_trials=n_trials)
    ran = run_study(d, storage_url=storage, max_minutes=max_minutes, on_trial=_log_trial)
    report = write_report(open_study(d, storage_url=storage), d)
    console.print(f"ran {ran} trials; report -> {report}")


@study_app.command()
def worker(
    definition: Definition,
    n_trials: Annotated[int, typer.Option(help="trials this worker runs")] = 1,
    storage: Storage = None,
) -> None:
    """Run exactly N_TRIALS more trials of a shared study (start several, on one machine or many)."""
    from bitalloc.study.definition import load_definition
    from bitalloc.study.runner import run_study

    ran = run_study(load_definition(_resolve(definition)), n_trials=n_trials, storage_url=storage)
    console.print(f"worker ran {ran} trials")


@study_app.command()
def show(definition: Definition, storage: Storage = None) -> None:
    """Print the Pareto front and parameter importances; rewrite front.csv/front.png/report.md."""
    from bitalloc.study.definition import load_definition
    from bitalloc.study.report import write_report
    from bitalloc.study.runner import open_study

    d = load_definition(_resolve(definition))
    report = write_report(open_study(d, storage_url=storage), d)
    print(report.read_text())
