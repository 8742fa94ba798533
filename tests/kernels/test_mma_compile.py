"""The tensor-core kernel compiled for an H100/H200 (sm_90) on the CPU, with no GPU.

Every supported format and both tile widths must compile, which proves (``assert_trivial``) that the words
reach the mma operand without a layout conversion; the code must use the tensor cores, no local memory, and
shared memory only for the output tile (and wgmma's x buffers)."""

from __future__ import annotations

import re

import pytest

from bitalloc.kernels.mma import MmaConfig, compile_offline

pytest.importorskip("triton.experimental.gluon")


@pytest.mark.parametrize(
    ("bits", "group", "symmetric", "bn", "config"),
    [
        (4, 128, False, 16, MmaConfig(4, 4, 8)),  # the tuned batch-16 shape
        (4, 32, True, 8, MmaConfig(1, 4, 1)),
        (2, 64, False, 8, MmaConfig(2, 4, 2)),
        (8, 128, True, 16, MmaConfig(2, 8, 4)),
        (4, 128, True, 16, MmaConfig(1, 4, 2, wgmma=True)),
    ],
)
def test_kernel_compiles_for_sm90_without_layout_conversions(bits, group, symmetric, bn, config):
    kernel = compile_offline(bits, group, symmetric, bn, config)
    ptx = kernel.asm["ptx"]
    assert ("wgmma.mma_async" if config.wgmma else "mma.sync.aligned.m16n8k16") in ptx
    assert not re.search(r"\bld\.local|\bst\.local", ptx)  # no stack arrays
    epilogue = 16 * config.num_warps * config.tiles_per_warp * bn * 2  # the output tile, float16
    x_buffers = 2 * group * bn * 2 if config.wgmma else 0
    assert kernel.metadata.shared <= epilogue + x_buffers  # no shared-memory layout conversion of the words
