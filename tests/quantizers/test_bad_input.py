"""Bad input to the palette: too few calibration tokens and missing statistics are refused up front,
naming the unit and the scheme, before anything is quantized or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.models.units import discover_units
from bitalloc.quantizers.apply import apply_plan, save_quantized
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.registry import InsufficientCalibration, quantize_batch
from bitalloc.sensitivity.calibrate import calibrate
from tests.plans import manual_plan
from tests.quantizers.palette_data import real_weight_and_hessian

UNIT = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("name", "tokens"), [("awq-w4g64-asym", 575), ("kmeans-w3g64-asym", 255), ("lutgptq-w3g64-asym", 255)]
)
def test_too_few_tokens_names_unit_and_scheme(name: str, tokens: int, smollm2_full) -> None:
    weight, hessian = real_weight_and_hessian(smollm2_full, rows=8, tokens=tokens)
    cand = Candidate.parse(name)
    with pytest.raises(InsufficientCalibration) as info:
        quantize(weight, cand, hessian=hessian, unit=UNIT, n_tokens=tokens)
    message = str(info.value)
    assert UNIT in message and name in message and str(tokens) in message
    # one more token is enough; schemes without a search never ask
    assert quantize(weight, cand, hessian=hessian, unit=UNIT, n_tokens=tokens + 1).nbytes == cand.nbytes(
        (8, 576)
    )
    rtn = Candidate.parse("rtn-w4g64-asym")
    assert quantize(weight, rtn, unit=UNIT, n_tokens=1).nbytes == rtn.nbytes((8, 576))
    # a batch is refused as a whole
    with pytest.raises(InsufficientCalibration):
        quantize_batch(weight, [rtn, cand], hessian, UNIT, n_tokens=tokens)


def test_apply_plan_refuses_before_quantizing_or_writing(smollm2_small, tmp_path: Path) -> None:
    loaded = smollm2_small
    units = discover_units(loaded.model)
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(loaded.tokenizer, corpus, n_windows=1, seq_len=64, seed=0)
    stats = calibrate(loaded.model, units, windows, model_hash=loaded.model_hash, corpus_hash="-")
    assert stats.n_tokens == 64
    # the last unit asks for AWQ, which needs one calibration token per input channel
    names = ["rtn-w4g64-asym"] * (len(units) - 1) + ["awq-w4g64-asym"]
    plan = manual_plan(loaded, units, names)
    done: list[int] = []
    out = tmp_path / "model"

    def quantize_and_save() -> None:
        model = apply_plan(
            loaded.model,
            plan,
            model_hash=loaded.model_hash,
            hessians=stats.hessians,
            n_tokens=stats.n_tokens,
            on_unit=lambda d, t: done.append(d),
        )
        save_quantized(model, plan, out)

    with pytest.raises(InsufficientCalibration) as info:
        quantize_and_save()
    assert units[-1].name in str(info.value) and "awq-w4g64-asym" in str(info.value)
    assert done == [] and not out.exists()
    assert all(isinstance(loaded.model.get_submodule(u.name), nn.Linear) for u in units)
    # missing statistics for a unit that needs them: refused the same way
    gptq = manual_plan(loaded, units, ["gptq-w4g64-asym"] + ["rtn-w4g64-asym"] * (len(units) - 1))
    partial = {k: v for k, v in stats.hessians.items() if k != units[0].name}
    with pytest.raises(InsufficientCalibration) as info:
        apply_plan(loaded.model, gptq, model_hash=loaded.model_hash, hessians=partial, on_unit=done.append)
    assert units[0].name in str(info.value) and "gptq-w4g64-asym" in str(info.value) and done == []
