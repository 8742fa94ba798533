"""Distributed calibration over torch.distributed: each rank streams its share of the windows.

Rank r of w takes windows r, r+w, r+2w, ...; after each decoder layer the raw sums XᵀX and Σ|x| (and,
once, the token count) are all-reduced, so every rank ends with the statistics of all windows and
can score its layer's units identically. Launch with torchrun, for example::

    torchrun --nproc_per_node 2 -m bitalloc.sensitivity.distributed --model smollm2-135m \\
        --windows 32 --seq-len 512 --out stats.safetensors [--profile-out profile.parquet]

The backend is gloo on CPU and nccl when CUDA is available (one GPU per local rank).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from bitalloc.errors import BitallocError, InvalidInput
from bitalloc.models.units import Unit
from bitalloc.sensitivity.calibrate import CalibrationStats
from bitalloc.sensitivity.streaming import LayerSource, Reduce, calibrate_streaming


class NotDistributed(InvalidInput):
    """Distributed calibration was called without an initialised process group."""


def shard_windows(windows: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``windows`` (n, seq_len): every ``world``-th window from ``rank``."""
    if windows.shape[0] < world:
        raise InvalidInput(
            f"{windows.shape[0]} calibration windows cannot be shared by {world} processes; "
            f"ask for at least {world} windows or launch fewer processes"
        )
    return windows[rank::world]


def all_reduce_sum(group: dist.ProcessGroup | None = None) -> Reduce:
    """A Reduce that sums tensors in place over ``group`` (default: the world)."""

    def reduce(tensors: Sequence[torch.Tensor]) -> None:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    return reduce


def calibrate_distributed(
    model: nn.Module,
    units: tuple[Unit, ...],
    windows: torch.Tensor,
    *,
    model_hash: str,
    corpus_hash: str,
    batch_size: int = 4,
    settings: dict | None = None,
    source: LayerSource | None = None,
    device: torch.device | str | None = None,
    group: dist.ProcessGroup | None = None,
) -> CalibrationStats:
    """The CalibrationStats of all ``windows``, this rank calibrating its shard; same on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise NotDistributed(
            "no torch.distributed process group: launch with torchrun (which sets RANK and WORLD_SIZE) "
            "and call torch.distributed.init_process_group first, or use calibrate_streaming"
        )
    shard = shard_windows(windows, dist.get_rank(group), dist.get_world_size(group))
    return calibrate_streaming(
        model,
        units,
        shard,
        model_hash=model_hash,
        corpus_hash=corpus_hash,
        batch_size=batch_size,
        settings=settings,
        source=source,
        device=device,
        reduce=all_reduce_sum(group),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Layer-by-layer calibration with offloaded layers (torchrun or not)."
    )
    p.add_argument("--model", default="smollm2-135m", help="bundled name or HF folder with safetensors")
    p.add_argument("--corpus", default="wiki")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--layers", type=int, default=None, help="only the first N decoder layers")
    p.add_argument("--out", type=Path, required=True, help="statistics .safetensors (written by rank 0)")
    p.add_argument("--profile-out", type=Path, default=None, help="also write the profile (.parquet)")
    p.add_argument(
        "--palette", default=None, help="comma-separated candidates (default: the default palette)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: distributed under torchrun (WORLD_SIZE set), else one process; rank 0 writes."""
    args = _parser().parse_args(argv)
    launched = "WORLD_SIZE" in os.environ
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if launched:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        _run(args, device, launched)
    except BitallocError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        if launched:
            dist.destroy_process_group()
    return 0


def _run(args: argparse.Namespace, device: torch.device, launched: bool) -> None:
    from transformers import AutoTokenizer

    from bitalloc.data.corpora import Split, load_corpus
    from bitalloc.data.windows import calibration_windows
    from bitalloc.models.units import discover_units
    from bitalloc.pipeline import CalibrationSettings
    from bitalloc.quantizers.candidate import Candidate, default_palette
    from bitalloc.sensitivity.offload import (
        SafetensorsLayers,
        model_folder,
        offloaded_model,
        profile_offloaded,
    )
    from bitalloc.sensitivity.streaming import calibrate_streaming

    palette = (
        tuple(default_palette())
        if args.palette is None
        else tuple(Candidate.parse(name.strip()) for name in args.palette.split(",") if name.strip())
    )
    folder = model_folder(args.model)
    settings = asdict(CalibrationSettings(args.corpus, args.windows, args.seq_len, args.seed))
    corpus = load_corpus(args.corpus, Split.CALIBRATION)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = calibration_windows(
        tokenizer, corpus, n_windows=args.windows, seq_len=args.seq_len, seed=args.seed
    )
    rank, world = (dist.get_rank(), dist.get_world_size()) if launched else (0, 1)
    shard = shard_windows(windows, rank, world)
    off = offloaded_model(folder, num_layers=args.layers, device=device)  # after the cheap checks
    reduce = all_reduce_sum() if launched else None
    common = dict(corpus_hash=corpus.content_hash, batch_size=args.batch_size, settings=settings)
    prof = None
    if args.profile_out is not None:
        meta = {"model_name": args.model, "world_size": world}
        prof, stats = profile_offloaded(
            off, shard, palette, meta=meta, device=device, reduce=reduce, keep_hessians=True, **common
        )
    else:
        source = SafetensorsLayers(off, device)
        units = discover_units(off.model)
        stats = calibrate_streaming(
            off.model,
            units,
            shard,
            model_hash=off.model_hash,
            source=source,
            device=device,
            reduce=reduce,
            **common,
        )
    if rank == 0 and stats is not None:
        stats.save(args.out)
        if prof is not None:
            prof.save(args.profile_out)


if __name__ == "__main__":
    raise SystemExit(main())
