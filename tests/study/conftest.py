"""A tiny study definition: 2 layers, RTN only, 2 calibration windows of 64 tokens, 256 eval tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """
[study]
name = "{name}"
layers = 2
n_trials = {n_trials}
sampler = "random"
storage = "{storage}"

[evaluation]
max_tokens = 256
context = 128
stride = 64

[space]
kinds = ["rtn"]
bits = [[3, 4], [3, 8]]
group_sizes = [64]
symmetry = "sym"
calibration_windows = 2
calibration_seq_len = 64
pins = ["none", "edges8"]
budget_bpw = {{ low = 3.5, high = 4.5, step = 0.5 }}

[pins.edges8]
layers = [0, -1]
min_bits = 8

[[baseline]]          # no 8-bit candidate for the pinned layers: pruned
bits = [3, 4]
pins = "edges8"
budget_bpw = 4.0

[[baseline]]
bits = [3, 8]
pins = "none"
budget_bpw = 4.0
"""


def write_tiny(folder: Path, *, n_trials: int = 4, storage: str = "", name: str = "tiny") -> Path:
    """Write tiny.toml (study ``name``) into ``folder`` and return its path."""
    path = folder / "tiny.toml"
    path.write_text(TINY.format(n_trials=n_trials, storage=storage, name=name))
    return path


@pytest.fixture
def tiny_definition(tmp_path: Path) -> Path:
    return write_tiny(tmp_path)
