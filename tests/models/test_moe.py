from __future__ import annotations

import numpy as np
import pytest
import torch

from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput
from bitalloc.models.moe import discover_moe_units, parse_expert_unit, unfuse_experts, unit_weight
from bitalloc.models.train_moe import MoeTrainConfig, load_trained_moe, routing_markdown, train_moe
from bitalloc.models.units import discover_units
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.experts import RoutingRecorder
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics

TINY = MoeTrainConfig(
    hidden=32, intermediate=64, steps=15, seq_len=32, batch=8, train_tokens=12_000, vocab_size=512
)
PALETTE = [Candidate.parse("rtn-w3g32-asym")]


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "model"
    trained = train_moe(TINY, out)
    windows = calibration_windows(
        trained.tokenizer, load_corpus("wiki", Split.CALIBRATION), n_windows=4, seq_len=32, seed=3
    )
    return out, trained, windows


def test_trained_model_reloads_with_same_hash_and_outputs(tiny_moe):
    out, trained, windows = tiny_moe
    again = load_trained_moe(out)
    assert again.model_hash == trained.model_hash
    with torch.no_grad():
        torch.testing.assert_close(
            again.model(input_ids=windows).logits, trained.model(input_ids=windows).logits
        )
    with pytest.raises(InvalidInput, match="already holds a model"):
        train_moe(TINY, out)


def test_expert_units_follow_transformers_layout(tiny_moe):
    _, trained, _ = tiny_moe
    units = discover_moe_units(trained.model)
    experts = [u for u in units if parse_expert_unit(u.name)]
    assert len(experts) == TINY.layers * 2 * TINY.experts
    gate_up = next(u for u in experts if "gate_up_proj[3]" in u.name)
    assert gate_up.shape == (2 * TINY.intermediate, TINY.hidden)
    module, param, e = parse_expert_unit(gate_up.name)
    assert torch.equal(
        unit_weight(trained.model, gate_up), getattr(trained.model.get_submodule(module), param)[e]
    )
    assert len(units) - len(experts) == TINY.layers * 4  # q, k, v, o per layer; the router stays unquantized


def test_routing_stats_and_expert_hessians_match_per_expert_linears(tiny_moe):
    _, trained, windows = tiny_moe
    fused = trained.model
    linear = unfuse_experts(fused)
    with torch.no_grad():
        torch.testing.assert_close(linear(input_ids=windows).logits, fused(input_ids=windows).logits)
    with RoutingRecorder(fused, hessians=True) as rec, torch.no_grad():
        fused(input_ids=windows)
    routing = rec.stats()
    for module in routing.counts:
        assert float(routing.frequency(module).sum()) == pytest.approx(TINY.top_k)
    assert "| layer | e0 |" in routing_markdown(routing.table())
    layer = "model.layers.1.mlp.experts"
    e = int(routing.counts[layer].argmax())  # a cold expert would never reach calibrate's hooks
    expert_linears = tuple(u for u in discover_units(linear) if u.name.startswith(f"{layer}.{e}."))
    stats = calibrate(linear, expert_linears, windows, model_hash="h", corpus_hash="c")
    hessians = rec.expert_hessians()
    torch.testing.assert_close(
        hessians[f"{layer}.gate_up_proj[{e}]"], stats.hessians[f"{layer}.{e}.gate_proj"], rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        hessians[f"{layer}.down_proj[{e}]"], stats.hessians[f"{layer}.{e}.down_proj"], rtol=1e-4, atol=1e-6
    )
    # the 3-D unit's error is the sum of its per-expert Linears' errors (gate and up rows are independent)
    fused_units = [u for u in discover_moe_units(fused) if u.name == f"{layer}.gate_up_proj[{e}]"]
    linear_units = [
        u for u in discover_units(linear) if u.name.startswith(f"{layer}.{e}.") and "down" not in u.name
    ]
    cal = type(stats)(hessians=hessians, n_tokens=stats.n_tokens, model_hash="h", corpus_hash="c")
    metrics = ["hessian", "moe_uniform", "moe_freq_weight"]
    a = profile_metrics(
        fused,
        tuple(fused_units),
        PALETTE,
        metrics=metrics,
        meta={"unquantized_bytes": 0},
        inputs=MetricInputs(cal, routing=routing),
    )
    b = profile_metrics(
        linear,
        tuple(linear_units),
        PALETTE,
        metrics=["hessian"],
        meta={"unquantized_bytes": 0},
        inputs=MetricInputs(stats),
    )
    np.testing.assert_allclose(
        a["hessian"].table["error"].sum(), b["hessian"].table["error"].sum(), rtol=1e-3
    )
    freq, wsq = routing.unit_routing(f"{layer}.gate_up_proj[{e}]")
    h = a["hessian"].table["error"].iloc[0]
    assert a["moe_uniform"].table["error"].iloc[0] == pytest.approx(h / freq)
    assert a["moe_freq_weight"].table["error"].iloc[0] == pytest.approx(h * wsq)


def test_routing_recorder_refuses_a_dense_model(smollm2_small):
    with pytest.raises(InvalidInput, match="no experts module"):
        RoutingRecorder(smollm2_small.model)
