"""GPU kernels for the packed formats: torch reference, Triton GEMV/GEMM, registry, latency tables.

Triton is imported only by the kernel modules (``gemv``, ``gemm``):
``import bitalloc.kernels`` needs torch only.
"""
