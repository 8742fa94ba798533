from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bitalloc.data.corpora import Corpus, Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import CorpusTooShort, InvalidInput
from bitalloc.models.units import discover_units
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.calibrate import CalibrationStats, calibrate
from bitalloc.sensitivity.fisher import GradientsUnavailable, accumulate_fisher
from bitalloc.sensitivity.higgs import fit_noise_coefficients
from bitalloc.sensitivity.metrics import MissingStatistic, UnknownMetric, get_metric, registry
from bitalloc.sensitivity.profiler import profile_model
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics
from bitalloc.sensitivity.slim import group_salience, inverse_hessian_diagonal

PALETTE = [Candidate.parse(n) for n in ("rtn-w2g64-asym", "rtn-w8g64-asym")]
ALL = ("hessian", "fisher", "awq", "slim", "weight_mse", "higgs")


@pytest.fixture(scope="module")
def setup(smollm2_small):
    model = smollm2_small.model
    units = discover_units(model)[:7]  # layer 0: enough to exercise every metric cheaply
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=2, seq_len=32, seed=0)
    stats = calibrate(model, units, windows, model_hash=smollm2_small.model_hash, corpus_hash="c")
    fisher = accumulate_fisher(model, units, windows, batch_size=1)
    coeffs = fit_noise_coefficients(model, units, windows[:1])
    inputs = MetricInputs(calibration=stats, fisher=fisher, coefficients=coeffs)
    profiles = profile_metrics(
        model, units, PALETTE, metrics=ALL, inputs=inputs, meta={"unquantized_bytes": 0}
    )
    return model, units, windows, stats, profiles


def test_registry_names_and_unknown_metric():
    assert set(ALL) | {"moe_uniform", "moe_freq_weight"} == set(registry())
    with pytest.raises(UnknownMetric, match="known: hessian"):
        get_metric("nope")


def test_hessian_metric_equals_foundation_profiler(setup):
    model, units, _, stats, profiles = setup
    reference = profile_model(model, units, stats, PALETTE, meta={"unquantized_bytes": 0})
    np.testing.assert_allclose(profiles["hessian"].table["error"], reference.table["error"], rtol=1e-6)
    assert (profiles["hessian"].table["nbytes"] == reference.table["nbytes"]).all()


def test_every_metric_ranks_two_bits_worse_than_eight_and_is_saved(setup, tmp_path):
    for name, profile in setup[4].items():
        err = profile.table.pivot(index="unit", columns="candidate", values="error")
        assert (err["rtn-w2g64-asym"] > err["rtn-w8g64-asym"]).all(), name
        again = type(profile).load(profile.save(tmp_path / name))
        assert again.meta["metric"] == name and again.meta["estimator"] == name


def test_fisher_is_mean_squared_gradient(setup, smollm2_small):
    model, units, windows, _, _ = setup
    unit = units[6]  # o_proj
    fisher = accumulate_fisher(model, [unit], windows[:1], batch_size=1)[unit.name]
    weight = model.get_submodule(unit.name).weight
    weight.requires_grad_(True)
    batch = windows[:1]
    logits = model(input_ids=batch).logits
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    (grad,) = torch.autograd.grad(loss, weight)
    weight.requires_grad_(False)
    torch.testing.assert_close(fisher, grad.square(), rtol=1e-3, atol=1e-12)
    assert not weight.requires_grad and weight.grad is None


def test_slim_group_salience_matches_definition():
    torch.manual_seed(0)
    x = torch.randn(256, 8, dtype=torch.float64)
    h = x.T @ x / 256
    w = torch.randn(3, 8, dtype=torch.float64)
    inv = inverse_hessian_diagonal(h.float())
    direct = (w.square() / inv.square()).sum(0).view(2, 4).sum(1)
    torch.testing.assert_close(group_salience(w, h.float(), 4), direct)


def test_abs_means_are_mean_abs_activation_and_round_trip(setup, tmp_path):
    model, units, windows, stats, _ = setup
    captured = []
    handle = model.get_submodule(units[6].name).register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        model(input_ids=windows)
    handle.remove()
    expected = captured[0].reshape(-1, captured[0].shape[-1]).abs().mean(0)
    torch.testing.assert_close(stats.abs_means[units[6].name], expected, rtol=1e-4, atol=1e-6)
    stats.save(tmp_path / "s.safetensors")
    again = CalibrationStats.load(tmp_path / "s.safetensors")
    assert all(torch.equal(again.abs_means[u.name], stats.abs_means[u.name]) for u in units)
    old = CalibrationStats(stats.hessians, stats.n_tokens, stats.model_hash, stats.corpus_hash)
    old.save(tmp_path / "old.safetensors")  # a file as written before abs_means existed
    assert CalibrationStats.load(tmp_path / "old.safetensors").abs_means == {}


def test_metric_without_its_statistic_names_the_fix(setup):
    model, units, _, stats, _ = setup
    with pytest.raises(MissingStatistic, match="accumulate_fisher"):
        profile_metrics(
            model, units[:1], PALETTE, metrics=["fisher"], inputs=MetricInputs(calibration=stats), meta={}
        )


class _FrozenWeight(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.int8))


def test_gradient_metric_on_a_model_without_grads(setup):
    model, units, windows, _, _ = setup
    broken = copy.deepcopy(model)
    layer = broken.model.layers[0].self_attn
    layer.o_proj = _FrozenWeight(layer.o_proj)
    with pytest.raises(GradientsUnavailable, match="unquantized model"):
        accumulate_fisher(broken, units, windows[:1])


def test_bad_input_errors(setup, smollm2_small):
    model, units, windows, _, _ = setup
    with pytest.raises(InvalidInput, match="no quantizable units"):
        calibrate(model, (), windows, model_hash="h", corpus_hash="c")
    with pytest.raises(InvalidInput, match="no quantizable units"):
        profile_metrics(model, (), PALETTE, metrics=["weight_mse"], inputs=MetricInputs(), meta={})
    tiny = Corpus(name="tiny", split=Split.CALIBRATION, documents=("a few words",))
    with pytest.raises(CorpusTooShort, match="ask for at most"):
        calibration_windows(smollm2_small.tokenizer, tiny, n_windows=4, seq_len=32, seed=0)
    poisoned = copy.deepcopy(model)
    poisoned.model.layers[0].input_layernorm.weight.data.fill_(float("nan"))
    with pytest.raises(InvalidInput, match="non-finite activations"):
        calibrate(poisoned, units, windows, model_hash="h", corpus_hash="c")
