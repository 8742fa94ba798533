from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from bitalloc.allocator.problem import Budget
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.pipeline import make_plan
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.sensitivity.calibrate import CalibrationStats, calibrate
from bitalloc.sensitivity.distributed import NotDistributed, calibrate_distributed, main, shard_windows
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import profile_model

PALETTE = tuple(Candidate(QuantKind.RTN, b, 64, False) for b in (2, 3, 4, 5, 8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(prof):
    return make_plan(prof, Budget(target_bpw=4.0), solver="milp")


def test_torchrun_two_ranks_over_gloo_match_one_process(smollm2_small, tmp_path):
    out, prof_out = tmp_path / "stats.safetensors", tmp_path / "profile.parquet"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "bitalloc.sensitivity.distributed", "--windows", "4", "--seq-len", "32", "--layers", "2",
        "--batch-size", "2", "--out", str(out), "--profile-out", str(prof_out),
        "--palette", ",".join(c.name for c in PALETTE),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    dist_stats, dist_prof = CalibrationStats.load(out), SensitivityProfile.load(prof_out)

    model = smollm2_small.model
    units = discover_units(model)
    windows = calibration_windows(
        smollm2_small.tokenizer, load_corpus("wiki", Split.CALIBRATION), n_windows=4, seq_len=32, seed=0
    )
    one = calibrate(model, units, windows, model_hash="m", corpus_hash=dist_stats.corpus_hash)
    assert dist_stats.n_tokens == one.n_tokens == dist_prof.meta["n_tokens"] == 128
    assert dist_prof.meta["world_size"] == 2 and dist_stats.settings["n_windows"] == 4
    for u in units:
        torch.testing.assert_close(dist_stats.hessians[u.name], one.hessians[u.name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dist_stats.abs_means[u.name], one.abs_means[u.name], rtol=1e-5, atol=1e-6)
    meta = {"model_name": "t", "unquantized_bytes": unquantized_bytes(model, units)}
    one_prof = profile_model(model, units, one, PALETTE, meta=meta)
    cols = ["unit", "tie", "rows", "cols", "candidate", "nbytes"]
    assert dist_prof.table[cols].values.tolist() == one_prof.table[cols].values.tolist()
    assert np.allclose(dist_prof.table["error"], one_prof.table["error"], rtol=1e-4, atol=0)
    assert dist_prof.meta["unquantized_bytes"] == one_prof.meta["unquantized_bytes"]
    dist_plan, one_plan = _plan(dist_prof), _plan(one_prof)
    assert [c.candidate for c in dist_plan.assignment] == [c.candidate for c in one_plan.assignment]
    assert len({c.candidate for c in one_plan.assignment}) > 1  # a mixed plan, not a trivial one


def test_without_a_process_group_the_fix_is_named(smollm2_small):
    units = discover_units(smollm2_small.model)
    with pytest.raises(NotDistributed, match="torchrun"):
        calibrate_distributed(
            smollm2_small.model, units, torch.zeros(2, 8, dtype=torch.long), model_hash="m", corpus_hash="c"
        )


def test_shards_cover_every_window_once():
    windows = torch.arange(7 * 3).view(7, 3)
    shards = [shard_windows(windows, r, 3) for r in range(3)]
    assert sorted(torch.cat(shards)[:, 0].tolist()) == windows[:, 0].tolist()
    with pytest.raises(InvalidInput, match="at least 3 windows"):
        shard_windows(windows[:2], 0, 3)


def test_entry_point_runs_in_one_process_and_reports_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "one.safetensors"
    args = ["--windows", "2", "--seq-len", "16", "--layers", "1", "--out", str(out)]
    assert main(args) == 0
    stats = CalibrationStats.load(out)
    assert stats.n_tokens == 32 and len(stats.hessians) == 7
    assert all(name.startswith("model.layers.0.") for name in stats.hessians)
    text = tmp_path / "tiny.txt"
    text.write_text("One short paragraph.\n\nAnother short one.\n\nA third.\n")
    bad = ["--corpus", str(text), "--windows", "4", "--seq-len", "64", "--layers", "1"]
    assert main([*bad, "--out", str(tmp_path / "x")]) == 2
    assert "ask for at most" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
