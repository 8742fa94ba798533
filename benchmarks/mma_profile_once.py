"""One tensor-core kernel call on 8192x28672, for ncu: ``benchmarks/mma_profile_once.py BITS BATCH``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernels_speed import random_qweight

from bitalloc.kernels.fragment_layout import to_fragment_layout
from bitalloc.kernels.mma import MmaConfig, mma_matmul
from bitalloc.quantizers.candidate import Candidate, QuantKind

bits, batch = int(sys.argv[1]), int(sys.argv[2])
qw = random_qweight(Candidate(QuantKind.RTN, bits, 128, False), (8192, 28672))
frag = to_fragment_layout(qw)
x = torch.randn(batch, 28672, device="cuda", dtype=torch.float16)
for _ in range(3):
    mma_matmul(x, frag, MmaConfig(2, 4, 4))
torch.cuda.synchronize()
