"""Instructions in the tensor-core kernel's main loop per weight and thread, compiled for sm_90 without a GPU.

    python benchmarks/mma_sass_count.py [--bits 2,4,8] [--columns 8,16]

Compiles ``mma.py`` offline (``compile_offline``, Triton's ptxas), disassembles it with the ``cuobjdump`` that
ships with Triton, takes the longest backward branch as the K loop and counts its SASS instructions. One loop
iteration is one scale group: ``tiles per warp x 16 x group / 32`` weights per thread. Static counts: what the
issue slots must cover, not a timing.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton

from bitalloc.kernels.mma import MmaConfig, compile_offline

GROUP = 128


def loop_opcodes(cubin: bytes) -> collections.Counter:
    """Opcode counts of the longest backward-branch loop of a cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin" / "cuobjdump"
        sass = subprocess.run(
            [str(tool), "-sass", str(path)], capture_output=True, text=True, check=True
        ).stdout
    code = [
        (int(m.group(1), 16), m.group(2).strip())
        for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+([^;]*);", sass)
    ]
    loops = [
        (int(target.group(1), 16), addr)
        for addr, text in code
        if "BRA" in text and (target := re.search(r"0x([0-9a-f]+)", text)) and int(target.group(1), 16) < addr
    ]
    start, stop = max(loops, key=lambda span: span[1] - span[0])
    ops = (
        re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
        for addr, text in code
        if start <= addr <= stop
    )
    return collections.Counter(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,4,8")
    parser.add_argument(
        "--columns", default="8,16", help="activation columns per mma (8: batch 1-8, 16: 9-16)"
    )
    args = parser.parse_args()
    print(f"group {GROUP}, asymmetric, 4 tiles per warp, 4 warps, split-K 8 (sm_90, offline)")
    print("| bits | columns | loop instr | per weight | top |")
    print("|---|---|---|---|---|")
    for bits in [int(b) for b in args.bits.split(",")]:
        for columns in [int(c) for c in args.columns.split(",")]:
            kernel = compile_offline(bits, GROUP, False, columns, MmaConfig(4, 4, 8))
            counts = loop_opcodes(kernel.asm["cubin"])
            total = sum(counts.values())
            weights = 4 * 16 * GROUP / 32
            top = ", ".join(f"{op} {n}" for op, n in counts.most_common(4))
            print(f"| {bits} | {columns} | {total} | {total / weights:.2f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
