"""`bitalloc plan` and `bitalloc frontier` options through typer's CliRunner, on a small saved profile."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bitalloc.allocator.options import PlanRequest, make_budget, plan_problem
from bitalloc.cli import app, main
from bitalloc.errors import InfeasibleBudget, InvalidInput
from bitalloc.sensitivity.profile import SensitivityProfile
from tests.allocator.smol_profile import small_profile


@pytest.fixture(scope="module")
def saved(smollm2_small, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "profile.parquet"
    small_profile(smollm2_small).save(path)
    return path


def plan(saved, tmp_path, *args):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", str(saved), "-o", str(out), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def bits_of(doc):
    return {a["unit"]: int(a["candidate"].split("-w")[1].split("g")[0]) for a in doc["assignment"]}


def test_bpw_and_max_bytes_together_the_smaller_wins(saved, tmp_path):
    by_bpw = plan(saved, tmp_path, "--target-bpw", "3.0")
    cap = by_bpw["totals"]["bytes"] - 20_000
    both = plan(saved, tmp_path, "--target-bpw", "3.0", "--max-bytes", str(cap))
    assert both["totals"]["bytes"] <= cap and both["budget"] == {"max_bytes": cap, "target_bpw": 3.0}
    loose = plan(saved, tmp_path, "--target-bpw", "3.0", "--max-bytes", str(10**9))
    assert loose["totals"]["bytes"] == by_bpw["totals"]["bytes"]


def test_bits_rules_and_pins_with_globs(saved, tmp_path):
    doc = plan(
        saved,
        tmp_path,
        "--target-bpw", "3.5",
        "--min-bits", "model.layers.0.*=4",
        "--max-bits", "model.layers.1.*=3",
        "--pin", "model.layers.1.mlp.down_proj=rtn-w2g64-sym",
    )  # fmt: skip
    bits = bits_of(doc)
    assert all(b >= 4 for u, b in bits.items() if u.startswith("model.layers.0."))
    assert all(b <= 3 for u, b in bits.items() if u.startswith("model.layers.1."))
    assert bits["model.layers.1.mlp.down_proj"] == 2
    assert doc["budget"]["min_bits"] == {"model.layers.0.*": 4.0}
    bare = plan(saved, tmp_path, "--target-bpw", "8", "--max-bits", "3")  # a bare number: every unit
    assert max(bits_of(bare).values()) == 3


@pytest.mark.parametrize("table", ["analytic", "measured"])
def test_max_latency_holds(saved, tmp_path, table):
    profile = SensitivityProfile.load(saved)
    problem = plan_problem(profile, PlanRequest(make_budget(max_latency=1.0), latency_table=table))
    lo, hi = problem.latency.min(axis=1).sum(), problem.latency.max(axis=1).sum()
    limit = lo + 0.3 * (hi - lo)
    doc = plan(saved, tmp_path, "--max-latency", str(limit), "--latency-table", table)
    assert doc["solver"]["usage"]["latency"] <= limit * (1 + 1e-9)
    assert doc["budget"]["max_latency"] == limit
    tighter = plan(saved, tmp_path, "--max-latency", str(lo + 0.1 * (hi - lo)), "--latency-table", table)
    assert tighter["solver"]["usage"]["latency"] <= (lo + 0.1 * (hi - lo)) * (1 + 1e-9)
    assert tighter["totals"]["predicted_error"] >= doc["totals"]["predicted_error"]


def test_max_active_bytes_weighs_bytes_by_routing(saved, tmp_path):
    profile = SensitivityProfile.load(saved)
    units = profile.units()
    routing = tmp_path / "routing.csv"
    pd.DataFrame({"unit": units[:7], "frequency": 0.1}).to_csv(routing, index=False)
    top = plan(saved, tmp_path, "--target-bpw", "8")["totals"]["bytes"]
    doc = plan(saved, tmp_path, "--max-active-bytes", str(0.5 * top), "--routing", str(routing))
    freq = dict.fromkeys(units, 1.0) | dict.fromkeys(units[:7], 0.1)
    active = sum(freq[a["unit"]] * a["nbytes"] for a in doc["assignment"])
    assert active <= 0.5 * top and doc["solver"]["usage"]["active_bytes"] == pytest.approx(active)
    # rarely routed units are cheap in active bytes: they keep more bits than the busy ones
    bits = bits_of(doc)
    assert np.mean([bits[u] for u in units[:7]]) > np.mean([bits[u] for u in units[7:]])


@pytest.mark.parametrize("solver", ["auto", "milp", "lagrange", "pulp", "pulp:PULP_CBC_CMD", "cvxpy", "baq"])
def test_every_solver_makes_a_plan_within_budget(saved, tmp_path, solver):
    doc = plan(saved, tmp_path, "--target-bpw", "3.25", "--solver", solver)
    assert doc["totals"]["bpw"] <= 3.25 and doc["solver"]["name"].startswith(solver)


def test_explain_writes_one_row_per_unit(saved, tmp_path):
    out = tmp_path / "why.csv"
    doc = plan(saved, tmp_path, "--target-bpw", "3.5", "--explain", str(out))
    df = pd.read_csv(out, keep_default_na=False)
    assert df["unit"].tolist() == [a["unit"] for a in doc["assignment"]]
    assert df["candidate"].tolist() == [a["candidate"] for a in doc["assignment"]]
    assert {"up_loss_per_byte", "down_loss_per_byte", "price_bytes", "reason"} <= set(df.columns)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (["--target-bpw", "3", "--solver", "gurobi-ish"], InvalidInput, "unknown solver"),
        (["--target-bpw", "3", "--min-bits", "model.layers.0.*=abc"], InvalidInput, "not a number of bits"),
        (["--target-bpw", "3", "--max-bits", "model.*=-1"], InvalidInput, "positive number"),
        (["--target-bpw", "3", "--pin", "rtn-w4g64-sym"], InvalidInput, "UNIT=VALUE"),
        (["--target-bpw", "3", "--pin", "model.*=rtn-w7g64-sym"], InvalidInput, "not in the palette"),
        (["--target-bpw", "3", "--min-bits", "decoder.*=4"], InvalidInput, "matches no unit"),
        (["--target-bpw", "3", "--min-bits", "5", "--max-bits", "4"], InvalidInput, "contradict"),
        ([], InvalidInput, "give a budget"),
        (["--target-bpw", "0.5"], InfeasibleBudget, "smallest feasible budget"),
        (["--max-latency", "10", "--latency-table", "nowhere.csv"], InvalidInput, "no latency table"),
        (["--max-active-bytes", "1e6", "--routing", "nowhere.csv"], InvalidInput, "unit,frequency"),
    ],
)
def test_bad_plan_options_name_the_fix(saved, tmp_path, args, error, match):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", str(saved), "-o", str(out), *args])
    assert isinstance(result.exception, error) and result.exception.args
    assert match in str(result.exception)
    assert not out.exists()  # nothing half-written


def test_the_entry_point_turns_bad_options_into_exit_code_2(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bitalloc", "plan", str(saved), "--target-bpw", "3", "--solver", "x"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "unknown solver 'x'; known solvers: auto, milp" in capsys.readouterr().err


def frontier(saved, tmp_path, *args):
    out = tmp_path / "frontier.csv"
    result = CliRunner().invoke(app, ["frontier", str(saved), "-o", str(out), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return pd.read_csv(out)


def test_frontier_exact_hull_and_a_byte_cap(saved, tmp_path):
    exact = frontier(saved, tmp_path, "--bpw", "2.5:4.0:0.5", "--exact")
    assert (exact["solver"] == "milp").all() and (exact["gap"] <= 1e-9).all()
    fast = frontier(saved, tmp_path, "--bpw", "2.5:4.0:0.5")
    assert (exact["loss"] <= fast["loss"] * (1 + 1e-12)).all()
    hull = frontier(saved, tmp_path, "--hull", "--max-points", "6", "--plot", str(tmp_path / "h.png"))
    assert 2 <= len(hull) <= 6 and (hull["gap"] == 0).all() and hull["bytes"].is_monotonic_increasing
    assert (tmp_path / "h.png").stat().st_size > 0
    cap = int(exact["bytes"].iloc[1])
    capped = frontier(saved, tmp_path, "--bpw", "2.5:4.0:0.5", "--max-bytes", str(cap))
    assert (capped["bytes"] <= cap).all() and (capped["budget_bytes"] <= cap).all()
    assert (frontier(saved, tmp_path, "--hull", "--max-bytes", str(cap))["bytes"] <= cap).all()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--exact", "--hull"], "not both"),
        (["--exact", "--solver", "baq"], "drop --solver"),
        (["--solver", "simplex"], "unknown solver"),
        (["--max-points", "5"], "needs --hull"),
        (["--bpw", "4:3"], "not a range"),
    ],
)
def test_bad_frontier_options_name_the_fix(saved, tmp_path, args, match):
    result = CliRunner().invoke(app, ["frontier", str(saved), "-o", str(tmp_path / "f.csv"), *args])
    assert isinstance(result.exception, InvalidInput) and match in str(result.exception)


def test_refine_measures_on_the_model_and_keeps_the_best_round(smollm2_small, tmp_path):
    folder = tmp_path / "model"
    smollm2_small.model.save_pretrained(folder)
    smollm2_small.tokenizer.save_pretrained(folder)
    saved = small_profile(smollm2_small, prefix="model.layers.1.").save(tmp_path / "p.parquet")
    args = ["--target-bpw", "3.0", "--refine", "--model", str(folder), "--refine-windows", "1"]
    doc = plan(saved, tmp_path, *args, "--refine-seq-len", "32")
    loop = doc["solver"]["closed_loop"]
    assert loop["measured_kl"][loop["round"] - 1] == min(loop["measured_kl"]) and loop["rounds"] == 2
    assert doc["totals"]["bpw"] <= 3.0
    bad = CliRunner().invoke(
        app, ["plan", str(saved), "--max-latency", "50", "--refine", "-o", str(tmp_path / "x")]
    )
    assert isinstance(bad.exception, InvalidInput) and "byte budgets" in str(bad.exception)
