from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.kernels.registry import (
    DEFAULT_TABLE,
    Registry,
    TunedEntry,
    batch_bucket,
    default_params,
    unsupported_reason,
)


def test_batch_buckets():
    assert [batch_bucket(b) for b in (1, 2, 16, 17, 64, 65, 256, 1000)] == [1, 16, 16, 64, 64, 256, 256, 256]


def _registry() -> Registry:
    gemv = {"block_n": 16, "block_k": 256, "split_k": 4, "num_warps": 4, "num_stages": 2}
    big = {"block_n": 64, "block_k": 128, "split_k": 1, "num_warps": 8, "num_stages": 2}
    gemm = {"block_m": 16, "block_n": 64, "split_k": 2, "num_warps": 4, "num_stages": 3}
    swap = {"block_out": 64, "block_k": 128, "split_k": 8, "num_warps": 4, "num_stages": 3}
    return Registry(
        "test",
        (
            TunedEntry(4, 4096, 4096, 1, "gemv", gemv),
            TunedEntry(4, 28672, 8192, 1, "gemv", big),
            TunedEntry(4, 4096, 4096, 16, "gemm", gemm),  # an older table's bucket-16 entry: ignored
            TunedEntry(4, 4096, 4096, 16, "swapab", swap),
            TunedEntry(4, 4096, 4096, 64, "gemm", gemm),
        ),
    )


def test_choose_exact_nearest_and_default():
    reg = _registry()
    assert reg.choose(4, (4096, 4096), 1).params["split_k"] == 4
    assert reg.choose(4, (4000, 4000), 1).params["split_k"] == 4  # nearest by size
    assert reg.choose(4, (30000, 8000), 1).params["block_n"] == 64
    assert reg.choose(4, (4096, 4096), 9).kernel == "swapab"
    assert reg.choose(4, (4096, 4096), 9).params["split_k"] == 8
    assert reg.choose(4, (4096, 4096), 2).params == swap_params()
    assert reg.choose(4, (4096, 4096), 17).kernel == "gemm"
    assert reg.choose(4, (4096, 4096), 40).params["split_k"] == 2
    assert reg.choose(3, (4096, 4096), 1).params == default_params("gemv", 1)  # bits never tuned
    assert reg.choose(3, (4096, 4096), 16).params == default_params("swapab", 16)
    assert reg.choose(4, (4096, 4096), 100).params == default_params("gemm", 100)


def swap_params() -> dict[str, int]:
    return {"block_out": 64, "block_k": 128, "split_k": 8, "num_warps": 4, "num_stages": 3}


def test_save_load_round_trip(tmp_path):
    reg = _registry()
    reg.save(tmp_path / "t.json")
    assert Registry.load(tmp_path / "t.json") == reg


def test_bad_tables_name_the_fix(tmp_path):
    with pytest.raises(InvalidInput, match="--tune"):
        Registry.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(
        '{"format": "bitalloc.kernels/v2", "device": "x", "entries": [{"bits": 4}]}'
    )
    with pytest.raises(InvalidInput, match="re-run --tune"):
        Registry.load(tmp_path / "bad.json")


def test_repository_table_loads():
    reg = Registry.load()
    if DEFAULT_TABLE.exists():
        assert reg.entries and all(e.kernel in ("gemv", "mma", "swapab", "gemm") for e in reg.entries)


def test_unsupported_reasons():
    cpu = torch.device("cpu")
    assert unsupported_reason(4, 32, (8, 64), torch.float16, cpu, True) is None
    assert "float32" in unsupported_reason(4, 32, (8, 64), torch.float32, cpu, True)
    assert "CUDA" in unsupported_reason(4, 32, (8, 64), torch.float16, cpu, False)
    assert "7-bit" in unsupported_reason(7, 32, (8, 64), torch.float16, cpu, True)


def test_choose_mma_takes_the_smallest_tuned_batch_that_holds_the_call():
    at8 = {"tiles_per_warp": 4, "num_warps": 4, "split_k": 16}
    at16 = {"tiles_per_warp": 4, "num_warps": 4, "split_k": 8}
    reg = Registry(
        "test", (TunedEntry(4, 8192, 28672, 8, "mma", at8), TunedEntry(4, 8192, 28672, 16, "mma", at16))
    )
    assert [reg.choose_mma(4, (8192, 28672), b).params for b in (2, 8, 9, 16)] == [at8, at8, at16, at16]
    only16 = Registry("test", (TunedEntry(4, 8192, 28672, 16, "mma", at16),))
    assert only16.choose_mma(4, (8192, 28672), 4).params == at16  # no batch-8 entries: the batch-16 ones
    assert only16.choose_mma(2, (8192, 28672), 4).params == default_params("mma", 4)


def test_choose_mma_tells_apart_shapes_of_equal_size():
    wide = {"tiles_per_warp": 4, "num_warps": 4, "split_k": 16}
    tall = {"tiles_per_warp": 4, "num_warps": 4, "split_k": 8}
    reg = Registry(
        "test", (TunedEntry(4, 4096, 14336, 16, "mma", wide), TunedEntry(4, 14336, 4096, 16, "mma", tall))
    )
    assert reg.choose_mma(4, (14336, 4096), 16).params == tall
    assert reg.choose_mma(4, (4096, 14336), 16).params == wide
    assert reg.choose_mma(4, (12288, 4096), 16).params == tall  # nearest in size first, then in aspect


def test_choose_mma_takes_the_nearest_tuned_entry_or_defaults():
    mma = {"tiles_per_warp": 2, "num_warps": 8, "split_k": 16}
    reg = Registry("test", (TunedEntry(4, 8192, 28672, 16, "mma", mma),))
    assert reg.choose_mma(4, (8192, 28672), 9) == reg.choose_mma(4, (4096, 14336), 16)
    assert reg.choose_mma(4, (4096, 14336), 16).params == mma
    assert reg.choose_mma(2, (4096, 4096), 16).params == default_params("mma", 16)  # bits never tuned


def test_choose_call_names_the_path_each_call_takes():
    from bitalloc.quantizers.candidate import Candidate, QuantKind

    reg = Registry("test", ())
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    c4 = Candidate(QuantKind.RTN, 4, 128, False)
    c3 = Candidate(QuantKind.RTN, 3, 128, False)
    f16, bf16 = torch.float16, torch.bfloat16
    assert reg.choose_call(c4, (64, 256), 5, f16, cuda).kernel == "mma"
    assert (
        reg.choose_call(c4, (64, 256), 5, f16, cpu, interpret=True).kernel == "swapab"
    )  # no Gluon interpreter
    assert reg.choose_call(c4, (64, 256), 5, bf16, cuda).kernel == "swapab"
    assert reg.choose_call(c4, (72, 256), 5, f16, cuda).kernel == "swapab"  # 72 outputs: not 16-row tiles
    assert reg.choose_call(c3, (64, 256), 5, f16, cuda).kernel == "mma"  # low and high words
    c3g32 = Candidate(QuantKind.RTN, 3, 32, False)
    assert reg.choose_call(c3g32, (64, 256), 5, f16, cuda).kernel == "swapab"  # 3-bit needs groups >= 64
    assert reg.choose_call(c4, (64, 256), 1, f16, cuda).kernel == "gemv"
    assert reg.choose_call(c4, (64, 256), 17, f16, cuda).kernel == "gemm"
    fallback = reg.choose_call(Candidate(QuantKind.RTN, 7, 128, False), (64, 256), 5, f16, cuda)
    assert fallback.kernel == "reference" and "7-bit" in (fallback.reason or "")
    assert reg.choose_call(c4, (64, 256), 5, f16, cpu).kernel == "reference"  # CPU without the interpreter
