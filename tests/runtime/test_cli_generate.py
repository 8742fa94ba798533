"""`bitalloc generate` on a folder written by `bitalloc apply` (the bundled model, its first two layers)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from bitalloc.cli import app
from bitalloc.errors import InvalidInput
from bitalloc.models.units import discover_units
from bitalloc.quantizers.apply import apply_plan, save_quantized
from bitalloc.quantizers.load import load_quantized
from tests.plans import manual_plan


def test_generate_continues_the_prompt_as_the_reference_path_does(smollm2_small, tmp_path):
    loaded = smollm2_small
    units = discover_units(loaded.model)
    plan = manual_plan(loaded, units, ["rtn-w4g64-asym"] * len(units))
    quantized = apply_plan(loaded.model, plan, model_hash=loaded.model_hash)
    save_quantized(quantized, plan, tmp_path / "q", tokenizer=loaded.tokenizer)
    result = CliRunner().invoke(
        app, ["generate", "--model-dir", str(tmp_path / "q"), "--prompt", "Paris", "--tokens", "2"]
    )
    assert result.exit_code == 0, result.output
    model, _ = load_quantized(tmp_path / "q")  # the torch reference path of the same folder
    ids = loaded.tokenizer("Paris", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=2, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" + loaded.tokenizer.decode(ref) in result.stdout
    assert "decode steps" in result.output and "plan 4.500 bpw" in result.output  # rtn-w4g64-asym


def test_generate_refuses_a_folder_without_a_model(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--model-dir", str(tmp_path)])
    assert isinstance(result.exception, InvalidInput) and "bitalloc apply" in str(result.exception)
