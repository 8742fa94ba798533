"""What people look at: the Pareto front (table + PNG), parameter importances, baselines at equal bytes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from bitalloc.study.definition import StudyDefinition


def markdown(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (floats to 5 significant digits)."""

    def cell(v) -> str:
        return f"{v:.5g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def trials_table(study) -> pd.DataFrame:
    """One row per completed trial: number, objectives, measured values, parameters, plan id."""
    import optuna

    rows = []
    front = {t.number for t in study.best_trials}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row = {"trial": t.number, "front": t.number in front, "baseline": "fixed_params" in t.system_attrs}
        for key in ("perplexity", "kl", "bytes", "bpw", "latency", "plan_id", "reused_from"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        row.update(t.params)
        rows.append(row)
    return pd.DataFrame(rows)


def pruned_count(study) -> int:
    """Trials pruned as infeasible."""
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))


def front_table(study) -> pd.DataFrame:
    """The Pareto-optimal trials, by bytes."""
    df = trials_table(study)
    if df.empty:
        return df
    return df[df["front"]].sort_values("bytes" if "bytes" in df else "trial").reset_index(drop=True)


def importances(study, objective: int = 0) -> dict[str, float]:
    """Importance (Optuna default evaluator, PED-ANOVA) of each parameter for one objective."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, target=lambda t: t.values[objective])
    except (RuntimeError, ValueError):
        return {}


def against_baselines(study) -> pd.DataFrame:
    """For each default-settings (enqueued) trial: the best searched trial at no more bytes, and its gain."""
    df = trials_table(study)
    if df.empty or "perplexity" not in df:
        return pd.DataFrame()
    rows = []
    for base in df[df["baseline"]].itertuples(index=False):
        rivals = df[(~df["baseline"]) & (df["bytes"] <= base.bytes)]
        if rivals.empty:
            continue
        best = rivals.loc[rivals["perplexity"].idxmin()]
        rows.append(
            {
                "baseline trial": base.trial,
                "baseline bytes": base.bytes,
                "baseline ppl": base.perplexity,
                "best trial": int(best["trial"]),
                "best bytes": int(best["bytes"]),
                "best ppl": float(best["perplexity"]),
                "ppl change %": 100.0 * (float(best["perplexity"]) / base.perplexity - 1.0),
            }
        )
    return pd.DataFrame(rows)


def plot_front(study, definition: StudyDefinition, path: Path) -> Path:
    """Scatter of every completed trial (first objective vs second), the front as a line, baselines marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = definition.objectives[1], definition.objectives[0]
    df = trials_table(study)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not df.empty:
        scale = 1e6 if x_name == "bytes" else 1.0
        ax.scatter(df[x_name] / scale, df[y_name], s=14, c="0.6", label="trials")
        front = df[df["front"]].sort_values(x_name)
        ax.plot(front[x_name] / scale, front[y_name], "o-", c="C0", label="Pareto front")
        base = df[df["baseline"]]
        ax.scatter(base[x_name] / scale, base[y_name], marker="x", s=60, c="C3", label="default settings")
        if df[y_name].min() > 0 and df[y_name].max() > 10 * df[y_name].min():
            ax.set_yscale("log")  # perplexities spanning decades
    ax.set_xlabel("model MB" if x_name == "bytes" else x_name)
    ax.set_ylabel(y_name)
    ax.set_title(f"study {definition.name}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(study, definition: StudyDefinition) -> Path:
    """Write ``front.csv``, ``front.png`` and ``report.md`` into the study folder; returns report.md."""
    folder = definition.folder
    folder.mkdir(parents=True, exist_ok=True)
    front = front_table(study)
    front.to_csv(folder / "front.csv", index=False)
    trials_table(study).to_csv(folder / "trials.csv", index=False)
    plot_front(study, definition, folder / "front.png")
    lines = [
        f"# Study {definition.name}",
        "",
        f"objectives: {', '.join(definition.objectives)} (minimized); "
        f"completed {len(trials_table(study))}, pruned {pruned_count(study)}",
        "",
        "## Pareto front",
        "",
        markdown(front) if not front.empty else "(no completed trial)",
        "",
        "## Parameter importances (first objective, Optuna default evaluator PED-ANOVA)",
        "",
    ]
    lines += [f"- {k}: {v:.3f}" for k, v in importances(study).items()] or ["(too few trials)"]
    versus = against_baselines(study)
    lines += [
        "",
        "## Default settings against the best searched trial at no more bytes",
        "",
        markdown(versus) if not versus.empty else "(no default-settings trial with a searched rival yet)",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
