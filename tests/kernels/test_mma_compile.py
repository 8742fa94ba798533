"""The tensor-core kernel compiled for an H100/H200 (sm_90) on the CPU, with no GPU.

Every supported format and both tile widths must compile, which proves (``assert_trivial``) that the words
reach the mma operand without a layout conversion; the code must use the tensor cores, no local memory, and
shared memory only for the output tile (and wgmma's x buffers). The compiles run in a fresh interpreter
without ``TRITON_INTERPRET``: the interpreter, once used in a process (the other kernel tests), can leave
``triton.language`` patched, and the Gluon compiler then fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton.experimental.gluon")

CASES = [  # bits, group, symmetric, columns, (tiles per warp, warps, split-K, wgmma)
    (4, 128, False, 16, (4, 4, 8, False)),  # the tuned batch-16 shape
    (4, 32, True, 8, (1, 4, 1, False)),
    (2, 64, False, 8, (2, 4, 2, False)),
    (8, 128, True, 16, (2, 8, 4, False)),
    (4, 128, True, 16, (1, 4, 2, True)),
    (3, 128, False, 16, (4, 4, 8, False)),  # 3-bit: low and high words
    (3, 64, True, 8, (1, 4, 1, False)),
]

_SCRIPT = """
import json, re, sys
from bitalloc.kernels.mma import MmaConfig, compile_offline
out = []
for bits, group, sym, bn, (tpw, warps, split, wgmma) in json.loads(sys.argv[1]):
    k = compile_offline(bits, group, sym, bn, MmaConfig(tpw, warps, split, wgmma))
    ptx = k.asm["ptx"]
    out.append({"wgmma": "wgmma.mma_async" in ptx, "mma": "mma.sync.aligned.m16n8k16" in ptx,
                "local": bool(re.search(r"\\bld\\.local|\\bst\\.local", ptx)), "shared": k.metadata.shared})
print("RESULT" + json.dumps(out))
"""


def test_kernel_compiles_for_sm90_without_layout_conversions():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(CASES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    for (bits, group, _, bn, (tpw, warps, _, wgmma)), got in zip(
        CASES, json.loads(lines[0][6:]), strict=True
    ):
        assert got["wgmma"] if wgmma else got["mma"], (bits, group, bn)
        assert not got["local"]  # no stack arrays
        epilogue = 16 * warps * tpw * bn * 2  # the output tile, float16
        x_buffers = 2 * group * bn * 2 if wgmma else 0
        assert got["shared"] <= epilogue + x_buffers  # no shared-memory layout conversion of the words
