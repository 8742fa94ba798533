"""The profiling job's body: calibrate, then score one unit at a time with a checkpoint after each.

A retried job skips the units its earlier attempts checkpointed (calibration statistics come from
the on-disk cache), and the rows come out in unit order with the metadata ``run_profile`` writes, so
a resumed profile has the same content hash as one computed in one go.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from bitalloc.errors import InvalidInput
from bitalloc.models.loading import LoadedModel, load_model, state_hash
from bitalloc.models.units import discover_units, unquantized_bytes
from bitalloc.pipeline import CalibrationSettings, get_calibration
from bitalloc.quantizers.candidate import Candidate, default_palette
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.sensitivity.profiler import profile_model

Progress = Callable[[str, int, int], None]  # (step, done, total)
SaveCheckpoint = Callable[[int, dict, int], None]  # (unit index, data, units in all)


def first_layers(loaded: LoadedModel, layers: int) -> LoadedModel:
    """``loaded`` cut to its first ``layers`` decoder layers (a quick, partial profile)."""
    inner = getattr(loaded.model, "model", None)
    stack = getattr(inner, "layers", None)
    if stack is None:
        raise InvalidInput(f"{loaded.name}: cannot find decoder layers to cut; leave `layers` unset")
    if layers > len(stack):
        raise InvalidInput(f"{loaded.name} has {len(stack)} decoder layers; ask for at most that many")
    model = loaded.model
    inner.layers = stack[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:layers]
    return LoadedModel(model, loaded.tokenizer, f"{loaded.name}[:{layers}]", state_hash(model))


def run_profile_job(
    source: str,
    params: dict,
    done: dict[int, dict],
    save: SaveCheckpoint,
    progress: Progress,
) -> tuple[SensitivityProfile, int]:
    """The profile of ``source`` under ``params`` (ProfileSettings fields), skipping units in ``done``.

    Returns the profile and how many units were taken from earlier checkpoints.
    """
    palette = (
        tuple(Candidate.parse(c) for c in params["candidates"])
        if params.get("candidates")
        else default_palette()
    )
    progress("load", 0, 1)
    loaded = load_model(source)
    if params.get("layers"):
        loaded = first_layers(loaded, int(params["layers"]))
    progress("load", 1, 1)
    units = discover_units(loaded.model)
    settings = CalibrationSettings(
        params.get("corpus", "wiki"),
        params.get("windows", 32),
        params.get("seq_len", 512),
        params.get("seed", 0),
    )
    stats = get_calibration(loaded, units, settings, progress)
    meta = {
        "model_name": loaded.name,
        "unquantized_bytes": unquantized_bytes(loaded.model, units),
        "metric": "hessian",
    }
    tables, full_meta = [], None
    for i, unit in enumerate(units):
        if i in done:
            tables.append(pd.DataFrame(done[i]["rows"]))
            full_meta = done[i]["meta"]
            continue
        part = profile_model(loaded.model, (unit,), stats, palette, meta=meta)
        full_meta = part.meta
        save(i, {"rows": part.table.to_dict(orient="list"), "meta": part.meta}, len(units))
        tables.append(part.table)
    table = pd.concat(tables, ignore_index=True)
    return SensitivityProfile(table=table, meta=dict(full_meta or {})), sum(1 for i in done if i < len(units))
