"""Pick a kernel and its tuned launch configuration per (format, shape, batch); no tuning at call time.

Tuned configurations live in ``configs/<device>.json`` (written by ``benchmarks/kernels_speed.py --tune``):
entries keyed by (bits, out, in, batch bucket). A shape that was not tuned takes the entry of the nearest
tuned shape (by weight size) of the same bits and bucket; with no entry at all, the built-in defaults.

Kernels per batch: 1 -> ``gemv``; 2-16 -> ``mma`` (the tensor-core kernel, ``mma.py``) for float16
activations on CUDA when the fragment layout holds the format (``choose_mma``), else ``swapab``
(``gemm_swapab.py``; it runs ``gemm`` itself for the formats it does not handle); larger -> ``gemm``.
Bucket-16 ``gemm`` entries of older tables are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bitalloc.errors import InvalidInput
from bitalloc.kernels.fragment_layout import fragment_supports
from bitalloc.kernels.layout import layout_supports
from bitalloc.quantizers.candidate import Candidate

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_TABLE = CONFIG_DIR / "h100.json"
DEVICE_TABLES = {"H200": CONFIG_DIR / "h200.json"}  # device name fragment -> its table, when present
BATCH_BUCKETS = (1, 16, 64, 256)
MMA_BATCHES = (8, 16)  # batch sizes the tensor-core kernel may be tuned at (calls take the next one up)
SWAPAB_MAX_BATCH = 16
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
FORMAT = "bitalloc.kernels/v2"  # v2: interleaved transposed layout (v1 tables hold other parameters)


@dataclass(frozen=True)
class KernelChoice:
    """Which path runs a call: ``gemv``/``mma``/``swapab``/``gemm`` and launch parameters, or ``reference``,
    why."""

    kernel: str
    params: dict[str, int]
    reason: str | None = None


@dataclass(frozen=True)
class TunedEntry:
    """One tuned configuration: format bits, weight shape, batch bucket, kernel and launch parameters."""

    bits: int
    out_features: int
    in_features: int
    batch: int
    kernel: str
    params: dict[str, int]


def kernel_for(batch: int) -> str:
    """The kernel that runs ``batch`` activation rows."""
    return "gemv" if batch == 1 else "swapab" if batch <= SWAPAB_MAX_BATCH else "gemm"


def default_table() -> Path:
    """The tuned table of the current CUDA device when the repository has one, else ``DEFAULT_TABLE``."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for fragment, path in DEVICE_TABLES.items():
            if fragment in name and path.exists():
                return path
    return DEFAULT_TABLE


def batch_bucket(batch: int) -> int:
    """The smallest tuned batch size at least ``batch`` (256 for anything larger)."""
    return next((b for b in BATCH_BUCKETS if batch <= b), BATCH_BUCKETS[-1])


def unsupported_reason(
    bits: int,
    group_size: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    interpret: bool,
) -> str | None:
    """None when a kernel can run this call, else why it cannot (named in the fallback warning)."""
    reason = layout_supports(bits, group_size, shape[1])
    if reason is not None:
        return reason
    if dtype not in KERNEL_DTYPES:
        return f"activations of dtype {dtype} (kernels take float16 or bfloat16)"
    if device.type != "cuda" and not interpret:
        return f"tensors on {device.type} (kernels need CUDA, or TRITON_INTERPRET=1 on CPU)"
    return None


@dataclass(frozen=True)
class Registry:
    """Tuned entries of one device, looked up per (bits, shape, batch)."""

    device: str
    entries: tuple[TunedEntry, ...]

    @classmethod
    def load(cls, path: Path | None = None) -> Registry:
        """Read a table written by ``save`` (default: ``default_table()``); a missing default table gives an
        empty registry (defaults)."""
        path = default_table() if path is None else Path(path)
        if not path.exists():
            if path == DEFAULT_TABLE:
                return cls("none", ())
            raise InvalidInput(
                f"no kernel configuration table at {path}; run benchmarks/kernels_speed.py --tune"
            )
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            entries = tuple(TunedEntry(**e) for e in data["entries"])
            return cls(str(data["device"]), entries)
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInput(f"{path} is not a kernel configuration table ({err}); re-run --tune") from err

    def save(self, path: Path) -> None:
        """Write the table as JSON."""
        data = {
            "format": FORMAT,
            "device": self.device,
            "entries": [asdict(e) for e in self.entries],
        }
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    def choose(self, bits: int, shape: tuple[int, int], batch: int) -> KernelChoice:
        """The kernel and parameters for a supported format: tuned entry, nearest tuned shape, or default."""
        bucket = batch_bucket(batch)
        kernel = kernel_for(batch)
        same = [e for e in self.entries if e.bits == bits and e.batch == bucket and e.kernel == kernel]
        if not same:
            return KernelChoice(kernel, default_params(kernel, batch))
        return KernelChoice(kernel, dict(nearest(same, shape).params))

    def choose_call(
        self,
        candidate: Candidate,
        shape: tuple[int, int],
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
        interpret: bool = False,
    ) -> KernelChoice:
        """The path one call takes (what ``KernelQuantLinear`` runs and the latency table times): the
        reference with its reason, or a kernel with its parameters."""
        bits, group = candidate.bits, candidate.group_size
        reason = unsupported_reason(bits, group, shape, dtype, device, interpret)
        if reason is not None:
            return KernelChoice("reference", {}, reason)
        choice = self.choose(bits, shape, batch)
        tensor_cores = dtype == torch.float16 and not interpret  # Gluon has no interpreter
        if choice.kernel == "swapab" and tensor_cores and fragment_supports(bits, group, shape) is None:
            return self.choose_mma(bits, shape, batch)
        return choice

    def choose_mma(self, bits: int, shape: tuple[int, int], batch: int) -> KernelChoice:
        """The tensor-core kernel for ``2 <= batch <= 16``: among the ``mma`` entries of the smallest tuned
        batch (``MMA_BATCHES``) that holds ``batch``, the nearest (``nearest``); else the defaults."""
        same = []
        for tuned_batch in (b for b in MMA_BATCHES if batch <= b):
            same = [
                e for e in self.entries if e.bits == bits and e.kernel == "mma" and e.batch == tuned_batch
            ]
            if same:
                break
        if not same:
            return KernelChoice("mma", default_params("mma", batch))
        return KernelChoice("mma", dict(nearest(same, shape).params))


def nearest(entries: list[TunedEntry], shape: tuple[int, int]) -> TunedEntry:
    """The entry nearest to ``shape`` in size, then in aspect ratio (4096x14336 and 14336x4096 differ)."""
    size = math.log(shape[0] * shape[1])

    def distance(e: TunedEntry) -> tuple[float, float]:
        aspect = abs(math.log(e.out_features / e.in_features) - math.log(shape[0] / shape[1]))
        return (abs(math.log(e.out_features * e.in_features) - size), aspect)

    return min(entries, key=distance)


def default_params(kernel: str, batch: int) -> dict[str, int]:
    """Untuned launch parameters that run everywhere."""
    if kernel == "gemv":
        return {"block_n": 64, "block_k": 256, "split_k": 2, "num_warps": 4, "num_stages": 3}
    if kernel == "mma":  # split_k 0: chosen from the shape and the SM count
        return {"tiles_per_warp": 4, "num_warps": 4, "split_k": 0}
    if kernel == "swapab":  # split_k 0: chosen from the shape and the SM count
        return {"block_out": 128, "block_k": 256, "split_k": 0, "num_warps": 4, "num_stages": 3}
    block_m = 16 if batch <= 16 else 64
    return {"block_m": block_m, "block_n": 64, "split_k": 1, "num_warps": 4, "num_stages": 3}
