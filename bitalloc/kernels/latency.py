"""The measured latency table: microseconds per (format, shape, batch) on one device, for the allocator.

Written by ``benchmarks/kernels_speed.py --latency`` (each kernel timed alone, or back to back) or by
``benchmarks/decoder_latency.py`` (kernel ``decoder``: what one launch adds to the captured decode step,
batch 1); columns ``COLUMNS``. The quantizer kind (RTN, GPTQ) does not change the stored format, so both map
to the same row.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from bitalloc.errors import InvalidInput
from bitalloc.kernels.registry import CONFIG_DIR, batch_bucket
from bitalloc.quantizers.candidate import Candidate

DEFAULT_LATENCY = CONFIG_DIR / "latency_h100.csv"
COLUMNS = (
    "format",
    "bits",
    "group_size",
    "symmetric",
    "out_features",
    "in_features",
    "batch",
    "kernel",
    "us",
    "fp16_us",
    "nbytes",
)  # of the CSV; the lookups read bits, group_size, symmetric, the shape, batch, us and fp16_us


def shipped_table(name: str) -> Path:
    """The repository's table for ``measured`` (the H100's) or ``measured-<device>`` (``measured-h200``)."""
    device = name.split("-", 1)[1] if "-" in name else "h100"
    path = CONFIG_DIR / f"latency_{device}.csv"
    if name.split("-", 1)[0] != "measured" or not path.exists():
        shipped = sorted(p.stem.removeprefix("latency_") for p in CONFIG_DIR.glob("latency_*.csv"))
        raise InvalidInput(
            f"no shipped latency table {name!r}; use 'measured' (h100) or one of "
            f"{['measured-' + d for d in shipped]}, or the path of a CSV"
        )
    return path


@dataclass(frozen=True)
class LatencyRow:
    """One measurement: format, weight shape, batch, kernel time and fp16 cuBLAS time (microseconds)."""

    bits: int
    group_size: int
    symmetric: bool
    out_features: int
    in_features: int
    batch: int
    us: float
    fp16_us: float


@dataclass(frozen=True)
class LatencyTable:
    """Latency rows of one device with lookups that scale from the nearest measured shape."""

    rows: tuple[LatencyRow, ...]

    @classmethod
    def load(cls, path: Path = DEFAULT_LATENCY) -> LatencyTable:
        """Read the CSV; a missing or malformed file raises InvalidInput naming the command that writes it."""
        path = Path(path)
        if not path.exists():
            raise InvalidInput(
                f"no latency table at {path}; run benchmarks/kernels_speed.py --latency {path}"
            )
        try:
            with open(path, newline="") as f:
                rows = tuple(
                    LatencyRow(
                        int(r["bits"]),
                        int(r["group_size"]),
                        r["symmetric"] == "True",
                        int(r["out_features"]),
                        int(r["in_features"]),
                        int(r["batch"]),
                        float(r["us"]),
                        float(r["fp16_us"]),
                    )
                    for r in csv.DictReader(f)
                )
        except (KeyError, ValueError) as err:
            raise InvalidInput(f"{path} is not a latency table ({err}); re-run --latency") from err
        if not rows:
            raise InvalidInput(f"{path} holds no rows; re-run benchmarks/kernels_speed.py --latency")
        return cls(rows)

    def predict(self, candidate: Candidate, shape: tuple[int, int], batch: int) -> float:
        """Microseconds of one call: the measured row, else the nearest shape of the format scaled by size.

        A group size the table does not hold takes the nearest measured group size of the same bits and
        symmetry (the shipped table measures group 128 only; scale bytes differ by a few percent).
        """
        fmt = [
            r
            for r in self.rows
            if (r.bits, r.symmetric, r.batch) == (candidate.bits, candidate.symmetric, batch_bucket(batch))
        ]
        if not fmt:
            raise InvalidInput(f"the latency table has no row for {candidate.name} at batch {batch}")
        group = min(
            {r.group_size for r in fmt}, key=lambda g: abs(math.log2(g / candidate.group_size))
        )  # the candidate's group size, else the nearest measured one (an approximation)
        same = [r for r in fmt if r.group_size == group]
        row = self._nearest(same, shape)
        return row.us * _size_ratio(row, shape)

    def predict_fp16(self, shape: tuple[int, int], batch: int) -> float:
        """Microseconds of the fp16 cuBLAS call for the nearest measured shape, scaled by size."""
        same = [r for r in self.rows if r.batch == batch_bucket(batch)]
        if not same:
            raise InvalidInput(f"the latency table has no row at batch {batch}")
        row = self._nearest(same, shape)
        return row.fp16_us * _size_ratio(row, shape)

    @staticmethod
    def _nearest(rows: list[LatencyRow], shape: tuple[int, int]) -> LatencyRow:
        def key(r: LatencyRow) -> tuple[float, float]:
            size = abs(math.log(r.out_features * r.in_features / (shape[0] * shape[1])))
            return (size, abs(math.log(r.out_features / r.in_features * shape[1] / shape[0])))

        return min(rows, key=key)


def _size_ratio(row: LatencyRow, shape: tuple[int, int]) -> float:
    return shape[0] * shape[1] / (row.out_features * row.in_features)
