from __future__ import annotations

import pytest

from bitalloc.errors import InvalidInput
from bitalloc.kernels.latency import DEFAULT_LATENCY, LatencyTable
from bitalloc.quantizers.candidate import Candidate

ROWS = """format,bits,group_size,symmetric,out_features,in_features,batch,kernel,us,fp16_us,nbytes
w4g128-asym,4,128,False,4096,4096,1,gemv,20.0,25.0,8650752
w4g128-asym,4,128,False,4096,14336,1,gemv,40.0,56.0,30277632
w4g128-asym,4,128,False,4096,4096,16,gemm,30.0,24.0,8650752
"""


def test_predict_exact_nearest_and_kind_independent(tmp_path):
    path = tmp_path / "lat.csv"
    path.write_text(ROWS)
    table = LatencyTable.load(path)
    rtn, gptq = Candidate.parse("rtn-w4g128-asym"), Candidate.parse("gptq-w4g128-asym")
    assert table.predict(rtn, (4096, 4096), 1) == pytest.approx(20.0)
    assert table.predict(gptq, (4096, 4096), 1) == pytest.approx(20.0)
    assert table.predict(rtn, (2048, 4096), 1) == pytest.approx(10.0)  # nearest shape scaled by size
    assert table.predict(rtn, (4096, 4096), 9) == pytest.approx(30.0)  # batch bucket 16
    assert table.predict_fp16((4096, 14336), 1) == pytest.approx(56.0)
    assert table.predict(Candidate.parse("rtn-w4g32-asym"), (4096, 4096), 1) == pytest.approx(
        20.0
    )  # group 128
    with pytest.raises(InvalidInput, match="w4g128-sym"):
        table.predict(Candidate.parse("rtn-w4g128-sym"), (4096, 4096), 1)
    with pytest.raises(InvalidInput, match="w3g128-asym"):
        table.predict(Candidate.parse("rtn-w3g128-asym"), (4096, 4096), 1)


def test_bad_tables_name_the_command(tmp_path):
    with pytest.raises(InvalidInput, match="--latency"):
        LatencyTable.load(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("format,bits\nw4,x\n")
    with pytest.raises(InvalidInput, match="re-run --latency"):
        LatencyTable.load(tmp_path / "bad.csv")


def test_repository_table_covers_the_palette_formats():
    table = LatencyTable.load(DEFAULT_LATENCY)
    for name in ("rtn-w2g32-sym", "gptq-w3g64-asym", "rtn-w4g128-asym", "rtn-w8g128-sym"):
        cand = Candidate.parse(name)
        for batch in (1, 16, 64, 256):
            assert table.predict(cand, (4096, 4096), batch) > 0


def test_shipped_tables_by_name():
    from bitalloc.kernels.latency import shipped_table

    assert shipped_table("measured") == DEFAULT_LATENCY
    with pytest.raises(InvalidInput, match="measured-"):
        shipped_table("measured-a100")
    with pytest.raises(InvalidInput, match="no shipped latency table"):
        shipped_table("measuredx")


def test_decoder_context_table_prices_the_decoder_launches():
    """The table measured inside the decode step (benchmarks/decoder_latency.py): every palette format at
    the 1.1 B decoder's four launch shapes, batch 1 only, each quantized launch cheaper than float16's."""
    from bitalloc.kernels.latency import shipped_table

    table = LatencyTable.load(shipped_table("measured-h200_decoder"))
    shapes = {(r.out_features, r.in_features) for r in table.rows}
    assert shapes == {(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)}
    assert {r.batch for r in table.rows} == {1}
    for shape in shapes:
        for bits in (2, 3, 4, 8):
            for sym in ("sym", "asym"):
                cand = Candidate.parse(f"rtn-w{bits}g128-{sym}")
                assert 0 < table.predict(cand, shape, 1) < table.predict_fp16(shape, 1)
    with pytest.raises(InvalidInput, match="at batch 16"):
        table.predict(Candidate.parse("rtn-w4g128-asym"), (2048, 2048), 16)
