"""Programmatic dependent launch (Hopper and later): a kernel launched with it may start while the kernel
before it still runs, once every program of that kernel has called ``gdc_launch_dependents`` (or exited).

The decode step's kernels call ``gdc_launch_dependents`` first, load what does not depend on the previous
kernel (weights, norm weights; the attention also the position, rope rows and cached keys/values, which only
earlier steps write: a step starts with ordinary launches), then ``gdc_wait`` (the previous kernel has
finished and its writes are visible) before reading activations or writing anything. Every program calls
``gdc_wait``, so a kernel never completes before its predecessor and the chain of waits orders every kernel
after all earlier ones. Kernels launched without it (torch, cuBLAS) are ordinary launches: they wait for the
whole kernel before.
"""

from __future__ import annotations

import os

import torch


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can be launched with programmatic dependent launch (not under the
    Triton interpreter, where the GDC instructions do not exist)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_launch(pdl: bool) -> dict[str, bool]:
    """Launch keyword arguments of a Triton kernel: ``launch_pdl`` only when asked (the interpreter and older
    launchers do not take it)."""
    return {"launch_pdl": True} if pdl else {}
