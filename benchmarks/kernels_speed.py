"""Kernel speed on the GPU: our GEMV/GEMM vs fp16 cuBLAS (and gemlite), tuning, and the latency table.

    python benchmarks/kernels_speed.py                       # speed table (Markdown) with the tuned configs
    python benchmarks/kernels_speed.py --tune OUT.json       # tune launch configs, write the registry table
    python benchmarks/kernels_speed.py --latency OUT.csv     # time every format x shape x batch, write CSV
    python benchmarks/kernels_speed.py --latency T.csv --latency-bits 3 --latency-batches 16 --latency-update
                                                             # re-time those rows of an existing table
    python benchmarks/kernels_speed.py --gemlite             # add gemlite (pip package) to the speed table

Shapes are (out, in). Times: each call captured in a CUDA graph and replayed, 128 MiB overwritten before
every timed call (L2 flushed), median of CUDA-event timings.
Bandwidth fraction = (weight bytes + activations + outputs) / time / measured copy bandwidth (read + write).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import torch

from bitalloc.kernels._pdl import pdl_supported
from bitalloc.kernels.fragment_layout import FragmentLayout, to_fragment_layout
from bitalloc.kernels.gemm import GemmConfig, gemm
from bitalloc.kernels.gemm_swapab import SwapABConfig, swapab
from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.latency import COLUMNS
from bitalloc.kernels.layout import KernelLayout, to_layout
from bitalloc.kernels.mma import MmaConfig, mma_matmul
from bitalloc.kernels.registry import BATCH_BUCKETS, Registry, TunedEntry, kernel_for
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packing import pack_codes, unpack_codes
from bitalloc.quantizers.quantized_weight import QuantizedWeight

LARGE = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
# the 1.1 B Llama of kernels_e2e.py: the decoder's fused q/k/v, o, gate/up, down; transformers' k/v, gate/up
LLAMA_1B = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (512, 2048), (8192, 2048)]
BITS = (2, 3, 4, 8)
WARMUP_S = 0.05  # untimed flushed calls before timing (8192x28672 4-bit: 56 us on a fresh layout, then 49)


def random_qweight(cand: Candidate, shape: tuple[int, int], device: str = "cuda") -> QuantizedWeight:
    """A packed weight with uniform random codes and realistic scales (never zeros)."""
    out_features, in_features = shape
    groups = (out_features, in_features // cand.group_size)
    q = torch.randint(0, 1 << cand.bits, shape, device=device, dtype=torch.uint8)
    scales = (torch.rand(groups, device=device) * 0.02 + 0.001).half()
    mins = None if cand.symmetric else (-scales.float() * (1 << (cand.bits - 1))).half()
    return QuantizedWeight(cand, shape, pack_codes(q, cand.bits), scales, mins)


def bench(fn, rep: int = 30, graph: bool = True, flush: str = "read") -> float:
    """Median microseconds of ``rep`` calls of ``fn``, each timed by CUDA events after flushing L2.

    With ``graph`` the call is captured once in a CUDA graph and replayed, so host launch overhead
    (Python, argument binding) stays out of the GPU time, as in a graph-captured decode step.
    ``flush="read"`` reads 128 MiB before each call (L2 then holds clean lines of another buffer);
    ``flush="write"`` overwrites 128 MiB (sessions 1-2): L2 is then full of dirty lines that are written
    back to memory during the timed call (~50 MB of extra traffic, about +9 us on every large call).
    Flushed calls run untimed for ``WARMUP_S`` first (steady state, as in a long decode).
    """
    fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.cuda.graph(g):
            fn()
        run = g.replay
    else:
        run = fn
    run()
    buffer = torch.ones(32 << 20, dtype=torch.int32, device="cuda")  # 128 MiB > the 50 MB L2

    def flush_l2() -> None:
        if flush == "write":
            buffer.zero_()
        else:
            buffer.sum(dtype=torch.int64)

    start_s = time.perf_counter()
    while time.perf_counter() - start_s < WARMUP_S:  # the first calls on fresh tensors ran up to 15% slower
        for _ in range(rep):
            flush_l2()
            run()
        torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for start, end in zip(starts, ends, strict=True):
        flush_l2()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
    return 1000.0 * times[len(times) // 2]


def bench_pipelined(fns, rep: int = 10) -> float:
    """Microseconds per call of ``fns`` run back to back in one CUDA graph (median replay / len(fns)).

    Each function reads its own copy of the weights (together larger than L2), as the layers of a decode
    step do: no flush, no per-call launch or timing overhead, neighbouring calls overlap their ramps. This
    is what a call costs inside a captured decode step (``--latency-mode pipelined``).
    """
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(torch.cuda.Stream()), torch.cuda.graph(g):
        for fn in fns:
            fn()
    for _ in range(3):
        g.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        g.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
    return 1000.0 * times[len(times) // 2] / len(fns)


def clone_tensors(obj):
    """A copy of a frozen dataclass of tensors (a layout) with every tensor field cloned."""
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dataclasses.replace(
        obj, **{k: v.clone() for k, v in fields.items() if isinstance(v, torch.Tensor)}
    )


def rotation(nbytes: int, total: int = 192 << 20, cap: int = 64) -> int:
    """How many weight copies make a working set larger than L2 (at most ``cap``)."""
    return max(1, min(cap, -(-total // nbytes)))


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s counting read plus write (1 GiB buffer)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = bench(lambda: b.copy_(a), rep=20, graph=False)
    return 2 * a.numel() / (us * 1e-6)


def run_kernel(
    x: torch.Tensor,
    layout: KernelLayout,
    kernel: str,
    params: dict[str, int],
    frag: FragmentLayout | None = None,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """One call of ``kernel``. ``into``: a batch-1 GEMV adds into this output, launched with programmatic
    dependent launch where supported: one launch, as the decoder calls it (without it, split-K zeroes a fresh
    output first: a memset launch per call)."""
    if into is not None and kernel == "gemv":
        return gemv(x, layout, GemvConfig(**params), out=into, accumulate=True, pdl=pdl_supported(x.device))
    if kernel == "mma":
        return mma_matmul(x, frag, MmaConfig(**params))
    if kernel == "gemv":
        return gemv(x, layout, GemvConfig(**params))
    if kernel == "swapab":
        return swapab(x, layout, SwapABConfig(**params))
    return gemm(x, layout, GemmConfig(**params))


def gemv_space() -> list[dict[str, int]]:
    """Launch configs of the f16x2 GEMV (K step = the layout's chunk; block_k serves the float32 path)."""
    return [
        {
            "block_n": bn,
            "block_k": 256,
            "split_k": sk,
            "num_warps": warps,
            "num_stages": 3,
            "prefetch": pf,
            "xs_rows": xr,
            "l2_slice": 1,  # acts only with PDL (the decoder), not in isolated calls: kernels_e2e measures it
        }
        for (bn, warps, splits), pf, xr in itertools.product(
            [(64, 2, (4, 8, 16)), (128, 4, (4, 8, 16)), (256, 4, (8, 16, 32, 64)), (512, 4, (8, 16, 32, 64))],
            [0, 1],
            [0, 1],
        )
        for sk in splits
    ]


def swapab_space() -> list[dict[str, int]]:
    """Launch configs of the swap-AB GEMM (batch 2-16); split_k 0 = about two programs per SM."""
    return [
        {"block_out": bo, "block_k": bk, "split_k": sk, "num_warps": w, "num_stages": 3}
        for (bo, w), bk, sk in itertools.product([(64, 4), (128, 4), (256, 8)], [128, 256], [0, 4])
    ]


def gemm_space(bucket: int) -> list[dict[str, int]]:
    if bucket <= 16:
        tiles = [(16, 64, 4), (16, 128, 4), (64, 128, 4)]
    elif bucket <= 64:
        tiles = [(64, 64, 4), (64, 128, 4)]
    else:
        tiles = [(64, 128, 4), (128, 128, 8), (256, 64, 8)]
    return [
        {"block_m": bm, "block_n": bn, "split_k": sk, "num_warps": w, "num_stages": 3}
        for (bm, bn, w), sk in itertools.product(tiles, [1, 2, 4])
    ]


def tune(path: Path, shapes: list[tuple[int, int]], base: Registry, batches: tuple[int, ...]) -> None:
    """Pick the fastest config per (bits, shape, batch bucket) at group 128 (64 where 128 does not fit).

    Entries of ``base`` for other batches or shapes are kept; a tuned entry of ``base`` competes with the new
    space.
    """
    entries = [
        e for e in base.entries if e.batch not in batches or (e.out_features, e.in_features) not in shapes
    ]
    for bits, shape in itertools.product(BITS, shapes):
        group = 128 if shape[1] % 128 == 0 else 64
        layout = to_layout(random_qweight(Candidate(QuantKind.RTN, bits, group, False), shape))
        for batch in batches:
            x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
            kernel = kernel_for(batch)
            if kernel == "gemv":
                space = gemv_space()
            else:
                space = swapab_space() if kernel == "swapab" else gemm_space(batch)
            tuned = [
                e.params
                for e in base.entries
                if (e.bits, e.out_features, e.in_features, e.batch, e.kernel)
                == (bits, shape[0], shape[1], batch, kernel)
            ]
            space += tuned
            if kernel == "gemv":  # the float32-path GEMV with its tuned configs competes (and is reported)
                space += [{**p, "half2": 0} for p in tuned]
            best = (float("inf"), space[0])
            best_fp32 = float("inf")
            for params in space:
                try:
                    us = bench(lambda p=params: run_kernel(x, layout, kernel, p), rep=15)  # noqa: B023 (called at once)
                except Exception as err:  # a config the compiler rejects (shared memory) is skipped
                    print(f"skip {params}: {type(err).__name__}", file=sys.stderr)
                    continue
                best = min(best, (us, params), key=lambda t: t[0])
                if params.get("half2", 1) == 0:
                    best_fp32 = min(best_fp32, us)
            entries.append(TunedEntry(bits, shape[0], shape[1], batch, kernel, best[1]))
            print(
                f"tuned w{bits} {shape} b{batch}: {best[0]:.1f} us {best[1]} (f32 GEMV {best_fp32:.1f} us)",
                flush=True,
            )
        Registry(torch.cuda.get_device_name(), tuple(entries)).save(
            path
        )  # after each shape: partial runs count


def speed_table(
    registry: Registry,
    shapes,
    batches,
    with_gemlite: bool,
    gemlite_budget_s: float = 60.0,
    flush: str = "read",
):
    """Markdown rows: fp16 cuBLAS, ours, and gemlite on the large shapes at batch <= 16 (time-boxed)."""
    bw = copy_bandwidth()
    gemlite_deadline = time.time() + gemlite_budget_s
    rows = [
        f"copy bandwidth {bw / 1e12:.2f} TB/s ({torch.cuda.get_device_name()}); shapes (out, in); "
        f"asym, group 128 (64 for SmolLM2); L2 flushed by {flush}ing 128 MiB",
        "",
        "| shape | batch | fp16 us | bits | ours us | frac BW | x fp16 | gemlite us |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, batch in itertools.product(shapes, batches):
        w16 = torch.randn(shape, device="cuda", dtype=torch.float16) * 0.02
        x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
        fp16_us = bench(lambda: torch.nn.functional.linear(x, w16), flush=flush)  # noqa: B023 (called at once)
        for bits in BITS:
            group = 128 if shape[1] % 128 == 0 else 64
            cand = Candidate(QuantKind.RTN, bits, group, False)
            qw = random_qweight(cand, shape)
            layout = to_layout(qw)
            choice = registry.choose_call(cand, shape, batch, x.dtype, x.device)
            frag = to_fragment_layout(qw) if choice.kernel == "mma" else None
            us = bench(lambda: run_kernel(x, layout, choice.kernel, choice.params, frag), flush=flush)  # noqa: B023
            moved = cand.nbytes(shape) + x.numel() * 2 + batch * shape[0] * 2
            frac = moved / (us * 1e-6) / bw
            run_gl = with_gemlite and shape in LARGE and batch <= 16 and time.time() < gemlite_deadline
            gl = gemlite_us(qw, x, flush) if run_gl else None
            gl_txt = "-" if gl is None else f"{gl:.1f}"
            rows.append(
                f"| {shape[0]}x{shape[1]} | {batch} | {fp16_us:.1f} | {bits} | {us:.1f} | {frac:.2f} | "
                f"{fp16_us / us:.2f} | {gl_txt} |"
            )
            print(rows[-1], flush=True)
    return rows


def nested_rows(registry: Registry, shapes, bw: float, flush: str = "read") -> list[str]:
    """Batch-1 GEMV on bit-nested weights reading the top k of 8 stored planes (nest-w<k>g128-asym)."""
    from bitalloc.kernels.layout import nested_layout

    rows = ["", "| shape | nested bits read | ours us | frac BW | bytes read |", "|---|---|---|---|---|"]
    for shape in shapes:
        x = torch.randn(1, shape[1], device="cuda", dtype=torch.float16)
        groups = (shape[0], shape[1] // 128)
        scales = (torch.rand(groups, device="cuda") * 0.02 + 0.001).half()
        mins = (-scales.float() * 128).half()
        full = torch.randint(0, 256, (8, shape[0] * shape[1] // 8), device="cuda", dtype=torch.uint8)
        for k in (2, 4, 8):
            layout = nested_layout(full[:k], scales, mins, 128, shape)
            choice = registry.choose(4, shape, 1)
            us = bench(lambda: run_kernel(x, layout, "gemv", choice.params), flush=flush)  # noqa: B023
            moved = layout.nbytes + x.numel() * 2 + shape[0] * 2
            rows.append(
                f"| {shape[0]}x{shape[1]} | {k} | {us:.1f} | {moved / (us * 1e-6) / bw:.2f} | {moved} |"
            )
            print(rows[-1], flush=True)
    return rows


def gemlite_us(qw: QuantizedWeight, x: torch.Tensor, flush: str = "read") -> float | None:
    """gemlite's time on the same codes (HQQ form: w = (q - zero) * scale), or None if it cannot run them."""
    try:
        import gemlite
    except ImportError:
        return None
    cand = qw.candidate
    if cand.bits not in (1, 2, 4, 8):
        return None
    out_features, in_features = qw.shape
    try:
        layer = gemlite.GemLiteLinear(
            cand.bits,
            group_size=cand.group_size,
            in_features=in_features,
            out_features=out_features,
            input_dtype=gemlite.DType.FP16,
            output_dtype=gemlite.DType.FP16,
        )
        codes = unpack_codes(qw.codes, cand.bits, out_features * in_features).view(out_features, in_features)
        scales = qw.scales
        mins = qw.mins if qw.mins is not None else -scales * (1 << (cand.bits - 1))
        zeros = (-mins.float() / scales.float()).half()  # (out, in/group): w = (q - zero) * scale
        layer.pack(codes, scales, zeros, None)
        layer(x)
        try:
            return bench(lambda: layer(x), flush=flush)
        except Exception:  # gemlite may not capture into a graph: time it launched from Python
            return bench(lambda: layer(x), graph=False, flush=flush)
    except Exception as err:  # gemlite is optional here; report and go on
        print(f"gemlite failed on {qw.shape} w{cand.bits}: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def latency_csv(
    registry: Registry,
    path: Path,
    shapes,
    groups=(32, 64, 128),
    pipelined: bool = False,
    bits_list=(2, 3, 4, 5, 6, 8),
    batches=BATCH_BUCKETS,
    update: bool = False,
) -> None:
    """Time every (bits, group, symmetry) x shape x batch with the registry's choice; write CSV. Isolated
    calls (``bench``: L2 flushed, one call per graph) or, with ``pipelined``, calls back to back on rotating
    weight copies (``bench_pipelined``; batch-1 GEMVs add into one output with PDL, as in the decoder; the
    float16 column stays a plain ``F.linear`` per call). With ``update`` the rows of ``path`` outside
    ``bits_list`` x ``batches`` are kept and the others replaced (``merged_rows``)."""
    measured = []
    for shape in shapes:
        for batch in batches:
            w16 = torch.randn(shape, device="cuda", dtype=torch.float16)
            x = torch.randn(batch, shape[1], device="cuda", dtype=torch.float16)
            if pipelined:
                ws = [w16] + [w16.clone() for _ in range(rotation(w16.numel() * 2) - 1)]
                fp16_us = bench_pipelined([lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in ws])
            else:
                fp16_us = bench(lambda: torch.nn.functional.linear(x, w16), rep=20)  # noqa: B023 (called at once)
            for bits, group, sym in itertools.product(bits_list, groups, (True, False)):
                if shape[1] % group:
                    continue
                cand = Candidate(QuantKind.RTN, bits, group, sym)
                qw = random_qweight(cand, shape)
                layout = to_layout(qw)
                choice = registry.choose_call(cand, shape, batch, x.dtype, x.device)
                frag = to_fragment_layout(qw) if choice.kernel == "mma" else None
                if pipelined:
                    copies = rotation(cand.nbytes(shape))
                    pairs = [(layout, frag)] + [
                        (clone_tensors(layout), frag and clone_tensors(frag)) for _ in range(copies - 1)
                    ]
                    into = torch.zeros(1, shape[0], dtype=x.dtype, device=x.device)  # the decoder's way
                    c = choice
                    us = bench_pipelined(
                        [
                            lambda p=p, c=c, x=x, o=into: run_kernel(x, p[0], c.kernel, c.params, p[1], o)
                            for p in pairs
                        ]
                    )
                else:
                    us = bench(lambda: run_kernel(x, layout, choice.kernel, choice.params, frag), rep=20)  # noqa: B023 (called at once)
                fmt = cand.name.split("-", 1)[1]
                measured.append(
                    {
                        "format": fmt,
                        "bits": bits,
                        "group_size": group,
                        "symmetric": sym,
                        "out_features": shape[0],
                        "in_features": shape[1],
                        "batch": batch,
                        "kernel": choice.kernel,
                        "us": round(us, 2),
                        "fp16_us": round(fp16_us, 2),
                        "nbytes": cand.nbytes(shape),
                    }
                )
        print(f"latency {shape} done", flush=True)
    rows = merged_rows(path, measured, bits_list, batches) if update else measured
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def merged_rows(path: Path, measured: list[dict], bits_list, batches) -> list[dict]:
    """The rows of the table at ``path`` outside ``bits_list`` x ``batches`` and the ``measured`` ones, in the
    table's order: a measured row takes the place of the row it re-times, rows of the subset that were not
    re-timed are dropped, new rows go last."""

    def key(row: dict) -> tuple[str, ...]:
        return tuple(str(row[c]) for c in ("format", "out_features", "in_features", "batch"))

    fresh = {key(r): r for r in measured}
    with open(path, newline="") as f:
        old = list(csv.DictReader(f))
    subset = [int(r["bits"]) in bits_list and int(r["batch"]) in batches for r in old]
    rows = [fresh.pop(key(r), r) for r, sub in zip(old, subset, strict=True) if not sub or key(r) in fresh]
    return rows + list(fresh.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", type=Path, help="tune and write the registry table here")
    parser.add_argument("--latency", type=Path, help="write the latency table (CSV) here")
    parser.add_argument("--table", type=Path, default=None, help="registry table to use (default: in repo)")
    parser.add_argument("--tune-batches", default="1,16,64,256", help="batch buckets to (re)tune")
    parser.add_argument("--gemlite", action="store_true", help="add gemlite to the speed table")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed table")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument(
        "--shapes", default="all", choices=["all", "large", "smollm2", "llama1b"], help="shape set"
    )
    parser.add_argument("--batches", default="1,16,64,256", help="batch sizes of the speed table")
    parser.add_argument("--nested", action="store_true", help="add batch-1 rows for bit-nested weights")
    parser.add_argument("--latency-groups", default="32,64,128", help="group sizes of the latency table")
    parser.add_argument("--latency-bits", default="2,3,4,5,6,8", help="bit widths of the latency table")
    parser.add_argument("--latency-batches", default="1,16,64,256", help="batch buckets of the latency table")
    parser.add_argument(
        "--latency-update", action="store_true", help="replace only these bits x batches rows of the table"
    )
    parser.add_argument(
        "--latency-mode",
        default="isolated",
        choices=["isolated", "pipelined"],
        help="latency table: one flushed call per graph, or calls back to back on rotating weight copies",
    )
    parser.add_argument(
        "--flush",
        default="read",
        choices=["read", "write"],
        help="how the speed table flushes L2 (see bench)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernels_speed needs a CUDA GPU")
    shapes = {"all": LARGE + SMOLLM2 + LLAMA_1B, "large": LARGE, "smollm2": SMOLLM2, "llama1b": LLAMA_1B}[
        args.shapes
    ]
    start = time.time()
    if args.tune:
        batches = tuple(int(b) for b in args.tune_batches.split(","))
        tune(args.tune, shapes, Registry.load(args.table) if args.table else Registry.load(), batches)
        print(f"tuning took {time.time() - start:.0f} s", flush=True)
    registry = Registry.load(args.tune or args.table) if (args.table or args.tune) else Registry.load()
    if args.latency:
        groups = tuple(int(g) for g in args.latency_groups.split(","))
        latency_csv(
            registry,
            args.latency,
            shapes,
            groups,
            pipelined=args.latency_mode == "pipelined",
            bits_list=tuple(int(b) for b in args.latency_bits.split(",")),
            batches=tuple(int(b) for b in args.latency_batches.split(",")),
            update=args.latency_update,
        )
    if not args.no_speed:
        batches = tuple(int(b) for b in args.batches.split(","))
        rows = speed_table(registry, shapes, batches, args.gemlite, flush=args.flush)
        if args.nested:
            large = [s for s in shapes if s[1] % 128 == 0]
            rows += nested_rows(registry, large, copy_bandwidth(), args.flush)
        text = "\n".join(rows)
        print("\n" + text)
        if args.out:
            args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
