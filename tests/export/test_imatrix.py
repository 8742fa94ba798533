"""imatrix.dat: llama.cpp's legacy layout, values = diag(H) after the reader divides by ncall."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.export.imatrix import decode_imatrix, encode_imatrix, imatrix_from_stats
from bitalloc.sensitivity.calibrate import CalibrationStats


def test_round_trip_and_layout():
    a = torch.randn(64, 8)
    h = a.T @ a / 64  # (8, 8)
    stats = CalibrationStats(
        hessians={"model.layers.0.self_attn.q_proj": h, "model.layers.0.self_attn.k_proj": h},
        n_tokens=2048,
        model_hash="m",
        corpus_hash="c",
    )
    entries = imatrix_from_stats(stats, list(stats.hessians), seq_len=512)
    data = encode_imatrix(entries, chunks=4, dataset="wiki")
    assert struct.unpack_from("<i", data) == (2,)
    name_len = struct.unpack_from("<i", data, 4)[0]
    assert data[8 : 8 + name_len] == b"blk.0.attn_q.weight"
    assert struct.unpack_from("<ii", data, 8 + name_len) == (4, 8)  # ncall = 2048 / 512 chunks, nval
    back, chunks, dataset = decode_imatrix(data)
    assert (chunks, dataset) == (4, "wiki")
    assert list(back) == ["blk.0.attn_q.weight", "blk.0.attn_k.weight"]
    np.testing.assert_allclose(back["blk.0.attn_k.weight"].values, h.diagonal().numpy(), rtol=1e-6)
    assert len(data) == 4 + 2 * (4 + 19 + 8 + 32) + 8 + 4


def test_bad_input():
    stats = CalibrationStats(hessians={}, n_tokens=1, model_hash="m", corpus_hash="c")
    with pytest.raises(InvalidInput, match="re-calibrate"):
        imatrix_from_stats(stats, ["model.layers.0.mlp.up_proj"], seq_len=512)
    with pytest.raises(InvalidInput, match="not an imatrix"):
        decode_imatrix(b"\x05\x00")
