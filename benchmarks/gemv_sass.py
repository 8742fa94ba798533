"""Instructions per weight in the f16x2 GEMV's main loop, from SASS compiled for sm_90 without a GPU.

    python benchmarks/gemv_sass.py [--bits 2,3,4,8] [--block-n 512] [--warps 4] [--chunk 128] [--xs-rows 1]

Compiles ``gemv_h2_kernel`` as the decoder launches it (PDL, slice prefetch, asymmetric codes, split-K
atomics) with Triton's compiler and its bundled ``ptxas`` and ``cuobjdump``, finds the main loop (the longest
backward branch) and counts its SASS by opcode. Pointers and integer arguments get the divisibility-by-16
specialization that Triton gives them at run time; without it the loads do not vectorize and float16 atomics
become compare-and-swap loops, so the counts would describe a kernel that never runs. One loop iteration is
one step: ``CHUNK`` inputs of ``BLOCK_N`` outputs; a thread's share is ``CHUNK * BLOCK_N / (32 * warps)``
weights. The core of the f16x2 path is 1.5 instructions per weight (per pair of weights one LOP3 and two
HFMA2); the rest is shifts, the 3-bit merge, the float32 tail of each dot, the activation sums, the scale,
loads and addresses.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bitalloc.kernels.gemv_h2 import HALF2_R, gemv_h2_kernel

SIGNATURE = {
    "x_ptr": "*fp16",
    "x2_ptr": "*i32",
    "a_ptr": "*i32",
    "b_ptr": "*i32",
    "s_ptr": "*fp16",
    "m_ptr": "*fp16",
    "y_ptr": "*fp16",
    "eps": "fp32",
    "N": "i32",
    "K": "i32",
    "QOFF": "fp32",
    "SPLIT_K": "i32",
}
UNSPECIALIZED = ("eps", "QOFF", "SPLIT_K")  # floats, and a split count that is rarely a multiple of 16
_ADDRESS = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def sass(bits: int, chunk: int, block_n: int, warps: int, xs_rows: bool) -> str:
    """SASS of the kernel for sm_90a (Triton's PTX, assembled by its bundled ptxas)."""
    consts = {
        "BITS": bits,
        "GROUP": 128,
        "HAS_MIN": True,
        "CHUNK": chunk,
        "BLOCK_N": block_n,
        "R": HALF2_R[bits],
        "PREFETCH": False,
        "XS_ROWS": xs_rows,
        "ASM": True,
        "ATOMIC": True,
        "PDL": True,
        "SELF_L2": True,
        "NORM": False,
        "ROW_BLOCK": 1,
    }
    signature = {**SIGNATURE, **{k: "constexpr" for k in consts}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIGNATURE) if a not in UNSPECIALIZED}
    kernel = triton.compile(
        ASTSource(gemv_h2_kernel, signature, consts, aligned),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps},
    )
    ptx = re.sub(r"^\.version \d+\.\d+", ".version 8.7", kernel.asm["ptx"], flags=re.M)  # bundled ptxas
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        cubin = Path(tmp) / "k.cubin"
        subprocess.run([tools / "ptxas", "-arch=sm_90a", Path(tmp) / "k.ptx", "-o", cubin], check=True)
        dump = [tools / "cuobjdump", "-sass", cubin]
        return subprocess.run(dump, check=True, capture_output=True, text=True).stdout


def main_loop(text: str) -> collections.Counter:
    """Opcodes of the longest backward branch's body."""
    lines = [(int(m.group(1), 16), m.group(2)) for m in map(_ADDRESS.match, text.splitlines()) if m]
    loops = []
    for address, instr in lines:
        target = re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", instr)
        if target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    start, end = max(loops, key=lambda span: span[1] - span[0])
    body = [instr for address, instr in lines if start <= address <= end]
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="2,3,4,8")
    parser.add_argument("--block-n", type=int, default=512)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--xs-rows", type=int, default=1)
    args = parser.parse_args()
    weights = args.chunk * args.block_n // (32 * args.warps)
    print(
        f"block_n {args.block_n}, {args.warps} warps, chunk {args.chunk}: {weights} weights per thread-step"
    )
    print("| bits | SASS per step | per weight | per byte of codes | top opcodes |")
    print("|---|---|---|---|---|")
    for bits in (int(b) for b in args.bits.split(",")):
        ops = main_loop(sass(bits, args.chunk, args.block_n, args.warps, bool(args.xs_rows)))
        total = sum(ops.values())
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
        print(f"| {bits} | {total} | {total / weights:.2f} | {total / weights * 8 / bits:.1f} | {top} |")


if __name__ == "__main__":
    main()
