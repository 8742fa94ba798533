"""llama.cpp preset rules on SmolLM2's shapes (hidden 576: k-quants fall back except on ffn_down)."""

from __future__ import annotations

import pytest

from bitalloc.export.common import ExportError
from bitalloc.export.gguf_presets import preset_type, preset_types, use_more_bits

N = 30


def t(preset, name, shape, n_gqa=3):
    return preset_type(preset, name, shape, n_layers=N, n_gqa=n_gqa, tied_output=True)


def test_use_more_bits_layers_for_30_layers():
    # n/8 = 3, 7n/8 = 26: layers 0-2, 26-29 and every third from 5
    assert [i for i in range(N) if use_more_bits(i, N)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_q4_k_m_on_smollm2():
    assert t("Q4_K_M", "blk.0.ffn_down.weight", (576, 1536)) == "Q6_K"
    assert t("Q4_K_M", "blk.4.ffn_down.weight", (576, 1536)) == "Q4_K"
    assert t("Q4_K_M", "blk.4.attn_q.weight", (576, 576)) == "Q5_0"  # Q4_K does not fit 576: fallback
    assert t("Q4_K_M", "blk.5.attn_v.weight", (192, 576)) == "Q8_0"  # Q6_K -> fallback Q8_0
    assert t("Q4_K_M", "blk.4.attn_v.weight", (192, 576)) == "Q5_0"
    assert t("Q4_K_M", "token_embd.weight", (49152, 576)) == "Q8_0"  # tied output, rows of 576
    assert t("Q4_K_M", "blk.0.attn_norm.weight", (576,)) == "F32"


def test_low_bit_presets():
    assert t("Q2_K", "blk.3.attn_v.weight", (192, 576)) == "IQ4_NL"  # Q3_K (n_gqa 3) -> fallback
    assert t("Q2_K", "blk.3.ffn_down.weight", (576, 1536)) == "Q3_K"
    assert t("Q3_K_M", "blk.0.ffn_down.weight", (576, 1536)) == "Q5_K"  # first n/16 layers (30 // 16 = 1)
    assert t("Q3_K_M", "blk.1.ffn_down.weight", (576, 1536)) == "Q4_K"
    assert t("Q3_K_M", "blk.2.ffn_down.weight", (576, 1536)) == "Q4_K"
    assert t("Q3_K_S", "blk.2.ffn_down.weight", (576, 1536)) == "Q3_K"
    assert t("Q3_K_L", "blk.9.attn_output.weight", (576, 576)) == "Q5_1"  # Q5_K -> fallback
    assert t("Q6_K", "blk.2.ffn_down.weight", (576, 1536)) == "Q6_K"
    shapes = {"output.weight": (1000, 512), "token_embd.weight": (1000, 512)}
    assert {k: v.name for k, v in preset_types("Q4_0", shapes, n_layers=N, n_gqa=3).items()} == {
        "output.weight": "Q6_K",
        "token_embd.weight": "Q4_0",
    }


def test_unknown_preset():
    with pytest.raises(ExportError, match=r"unknown llama\.cpp preset"):
        t("Q4_K_XL", "blk.0.attn_q.weight", (576, 576))
