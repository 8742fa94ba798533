"""The decoder's kernels with programmatic dependent launch, compiled for sm_90 on the CPU (no GPU).

Each must wait (``griddepcontrol.wait``) before it reads the previous kernel's output: the GEMV issues its
first step's weight, scale and offset loads before the wait and no activation load (the load count before the
wait is the same whether or not its step reads the activation sum), the attention kernel reads before the
wait only what earlier steps wrote (the position, rope rows, cached keys and values) and takes its split
ticket with an acq_rel, gpu-scope atomic, RMSNorm loads only its weight first. Run in a fresh interpreter
without ``TRITON_INTERPRET`` (see test_mma_compile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = """
import itertools
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bitalloc.kernels.argmax import _argmax_kernel
from bitalloc.kernels.decode_attention import _decode_attention_kernel
from bitalloc.kernels.gemv_h2 import HALF2_R, gemv_h2_kernel
from bitalloc.kernels.rmsnorm import _rmsnorm_kernel
from bitalloc.kernels.silu_mul import _silu_mul_kernel

def ptx(fn, sig, consts, warps=4):
    sig = {**sig, **{k: "constexpr" for k in consts}}
    return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps}).asm["ptx"]

def before_wait(text):
    wait = "griddepcontrol.wait"
    return text[: text.index(wait)].count("ld.global") if wait in text else -1

out = {}
gemv_sig = {"x_ptr": "*fp16", "x2_ptr": "*i32", "a_ptr": "*i32", "b_ptr": "*i32", "s_ptr": "*fp16",
            "m_ptr": "*fp16", "y_ptr": "*fp16", "eps": "fp32", "N": "i32", "K": "i32", "QOFF": "fp32",
            "SPLIT_K": "i32"}
for bits in (2, 3, 4, 8):
    for xs_rows in (False, True):
        for pdl in (False, True):
            consts = dict(BITS=bits, GROUP=128, HAS_MIN=True, CHUNK=128, BLOCK_N=256, R=HALF2_R[bits],
                          PREFETCH=True, XS_ROWS=xs_rows, ASM=True, ATOMIC=True, PDL=pdl, SELF_L2=False,
                          NORM=False, ROW_BLOCK=1)
            text = ptx(gemv_h2_kernel, gemv_sig, consts)
            out[f"gemv{bits}-{int(xs_rows)}-{int(pdl)}"] = before_wait(text)
            atomics = [t for t in text.split() if t.startswith(("red.", "atom."))]
            out.setdefault("gemv-atomics", []).extend(atomics)
consts = dict(BITS=4, GROUP=128, HAS_MIN=True, CHUNK=128, BLOCK_N=256, R=16, PREFETCH=True,
              XS_ROWS=False, ASM=True, ATOMIC=True, PDL=True, SELF_L2=True, NORM=False, ROW_BLOCK=1)
for bits, preload in itertools.product((3, 4), (True, False)):
    consts.update(BITS=bits, R=HALF2_R[bits], PREFETCH=preload)
    lines = ptx(gemv_h2_kernel, gemv_sig, consts).splitlines()
    marks = [i for i, line in enumerate(lines) if "prefetch.global.L2" in line]
    wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
    out[f"slice{bits}-{int(preload)}"] = [len(marks), max(marks) < wait]
for xs_rows, block in ((False, 2048), (True, 1024)):  # a weightless norm: the row in one block or two
    consts.update(BITS=4, R=16, PREFETCH=True, SELF_L2=False, XS_ROWS=xs_rows, NORM=True, ROW_BLOCK=block)
    text = ptx(gemv_h2_kernel, gemv_sig, consts)
    out[f"norm{block}"] = [before_wait(text), "sqrt" in text]
attn = ptx(_decode_attention_kernel,
    {"qkv_ptr": "*fp16", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "k_cache_ptr": "*fp16",
     "v_cache_ptr": "*fp16", "pos_ptr": "*i32", "out_ptr": "*fp16", "m_ws_ptr": "*fp32",
     "l_ws_ptr": "*fp32", "acc_ws_ptr": "*fp32", "ticket_ptr": "*i32", "scale": "fp32", "MAX_LEN": "i32",
     "WS_SPLITS": "i32"},
    dict(HQ=32, HKV=8, D=64, CHUNK=64, BLOCK_S=64, SPLITS=4, SPLITS_POW2=4, PDL=True))
out["attention"] = before_wait(attn)
head = attn[: attn.index("griddepcontrol.wait")]
out["attention-writes-first"] = [t for t in head.split() if t.startswith(("st.global", "atom.", "red."))]
out["ticket"] = [line.split()[1] for line in attn.splitlines() if "atom." in line]
out["rmsnorm"] = before_wait(ptx(_rmsnorm_kernel, {"x_ptr": "*fp16", "w_ptr": "*fp16", "y_ptr": "*fp16",
                                                   "H": "i32", "eps": "fp32"}, dict(BLOCK=2048, PDL=True), 8))
out["silu"] = before_wait(ptx(_silu_mul_kernel, {"gu_ptr": "*fp16", "y_ptr": "*fp16", "INTER": "i32"},
                              dict(BLOCK=1024, PDL=True)))
out["argmax"] = before_wait(ptx(_argmax_kernel, {"x_ptr": "*fp16", "out_ptr": "*i64", "pos_ptr": "*i32",
                                                 "N": "i32"}, dict(BLOCK=32768, ADVANCE=True, PDL=True), 16))
print("RESULT" + json.dumps(out))
"""


def test_decoder_kernels_wait_before_reading_activations():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    got = json.loads(lines[0][6:])
    for bits in (2, 3, 4, 8):
        assert got[f"gemv{bits}-0-0"] == got[f"gemv{bits}-1-0"] == -1  # no PDL: no wait at all
        weights_first = got[f"gemv{bits}-1-1"]
        assert weights_first > 0  # the first step's words, scales and offsets load before the wait
        assert got[f"gemv{bits}-0-1"] == weights_first  # and the activation sum does not
    # the rest of the slice asked for before the wait: words (a and b planes at 3 bits), scales, mins
    for preload in (0, 1):  # after the first step's loads, or (no preload) before any
        assert got[f"slice4-{preload}"] == [3, True] and got[f"slice3-{preload}"] == [4, True]
    # split-K sums add by relaxed reductions (PTX's default without a .sem): no ordering per element
    ordered = (".acq_rel", ".release", ".acquire")
    assert got["gemv-atomics"] and not any(o in op for op in got["gemv-atomics"] for o in ordered)
    # a weightless RMSNorm reads the row only after the wait (the same loads before it) and takes its root
    assert got["norm2048"] == [got["gemv4-0-1"], True] and got["norm1024"] == [got["gemv4-1-1"], True]
    assert got["silu"] == 0 and got["argmax"] == 0
    # the position, its rope rows and the first block of cached keys/values (not q/k/v), and nothing written
    assert got["attention"] > 3 and not got["attention-writes-first"]
    assert got["rmsnorm"] > 0  # its weight only (x is read after the wait)
    assert got["ticket"] and all(".acq_rel" in op and ".gpu" in op for op in got["ticket"])
