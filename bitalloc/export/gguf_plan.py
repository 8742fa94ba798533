"""Plan in GGUF types: a SensitivityProfile whose candidates are ggml types (``Q4_K``, ``Q5_0``, ...).

Each unit is scored with every type whose blocks divide its rows, by the same Hessian proxy as the
foundation palette, with the exact bytes of the type. GGUF stores q/k/v and gate/up as separate
tensors, so every unit is its own tie group. The bytes of everything else are counted as llama.cpp
stores them: 2-D tensors outside the plan (the embedding, which also serves the tied LM head) in
``embedding_type``, 1-D tensors in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from bitalloc.export.common import ExportError
from bitalloc.export.gguf_types import GGUF_PALETTE, GgufType
from bitalloc.export.gguf_writer import model_tensors
from bitalloc.models.units import Unit
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.proxy import proxy_errors


def gguf_fixed_bytes(model: nn.Module, units: Sequence[Unit], embedding_type: str) -> int:
    """Bytes of every tensor outside ``units`` as llama.cpp stores it (tied tensors once)."""
    planned = {f"{u.name}.weight" for u in units}
    embed = GgufType.of(embedding_type)
    total = 0
    for name, tensor in model_tensors(model).items():
        if name in planned:
            continue
        shape = tuple(tensor.shape)
        total += embed.nbytes(shape) if len(shape) >= 2 else 4 * tensor.numel()
    return total


def gguf_profile(
    model: nn.Module,
    units: Sequence[Unit],
    stats: CalibrationStats,
    *,
    types: Sequence[str] = GGUF_PALETTE,
    embedding_type: str = "Q8_0",
    meta: dict | None = None,
    on_unit: Callable[[int, int], None] | None = None,
) -> SensitivityProfile:
    """Score every unit with every GGUF type that fits it; candidates are the type names."""
    gtypes = [GgufType.of(t) for t in types]
    rows = []
    for i, unit in enumerate(units):
        weight = model.get_submodule(unit.name).weight.detach().float()  # (out, in)
        fitting = [t for t in gtypes if t.supports(unit.shape)]
        if not fitting:
            raise ExportError(f"no GGUF type of {list(types)} fits unit {unit.name!r} of shape {unit.shape}")
        w = weight.cpu().numpy()
        dequantized = [torch.from_numpy(t.decode(t.encode(w), unit.shape)) for t in fitting]
        errors = proxy_errors(weight.cpu(), dequantized, stats.hessians[unit.name].cpu())
        for t, error in zip(fitting, errors, strict=True):
            rows.append((unit.name, unit.name, *unit.shape, t.name, error, t.nbytes(unit.shape)))
        if on_unit is not None:
            on_unit(i + 1, len(units))
    table = pd.DataFrame(rows, columns=["unit", "tie", "rows", "cols", "candidate", "error", "nbytes"])
    full_meta = dict(
        meta or {},
        model_hash=stats.model_hash,
        corpus_hash=stats.corpus_hash,
        n_tokens=stats.n_tokens,
        calibration=stats.settings,
        estimator="hessian_proxy",
        palette=list(types),
        unquantized_bytes=gguf_fixed_bytes(model, units, embedding_type),
        gguf_embedding_type=embedding_type,
    )
    return SensitivityProfile(table=table, meta=full_meta)


def dequantize_units(model: nn.Module, types: dict[str, GgufType]) -> dict[str, torch.Tensor]:
    """unit -> its weight after a round trip through its GGUF type (float32, same shape)."""
    out = {}
    for unit, gtype in types.items():
        w = model.get_submodule(unit).weight.detach().float().cpu().numpy()
        out[unit] = torch.from_numpy(gtype.decode(gtype.encode(w), w.shape))
    return out
