"""A small saved profile of a real model, built in milliseconds: exact bytes, synthetic errors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitalloc.models.loading import LoadedModel
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile

PALETTE = ("rtn-w2g64-sym", "rtn-w3g64-sym", "rtn-w4g64-sym", "rtn-w8g64-sym")


def small_profile(
    loaded: LoadedModel, palette: tuple[str, ...] = PALETTE, *, prefix: str = ""
) -> SensitivityProfile:
    """Units of ``loaded`` (those starting with ``prefix``) x ``palette``: exact bytes, error
    numel * 4^-bits * a per-unit factor; every other tensor counts as unquantized."""
    every = discover_units(loaded.model)
    units = tuple(u for u in every if u.name.startswith(prefix))
    rng = np.random.default_rng(0)
    rows = []
    for unit in units:
        factor = float(rng.lognormal(0, 1))
        for name in palette:
            c = Candidate.parse(name)
            rows.append(
                {
                    "unit": unit.name,
                    "tie": unit.tie,
                    "rows": unit.shape[0],
                    "cols": unit.shape[1],
                    "candidate": name,
                    "error": unit.numel * factor * 4.0 ** (-c.bits),
                    "nbytes": c.nbytes(unit.shape),
                }
            )
    meta = {
        "model_hash": loaded.model_hash,
        "model_name": loaded.name,
        "corpus_hash": "synthetic",
        "palette": list(palette),
        "unquantized_bytes": unquantized_bytes(loaded.model, units),
        "calibration": {"corpus": "wiki", "n_windows": 2, "seq_len": 64, "seed": 0},
    }
    return SensitivityProfile(table=pd.DataFrame(rows), meta=meta)
