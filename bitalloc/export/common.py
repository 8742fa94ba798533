"""Checks every exporter runs before it writes anything: the model, the plan's schemes, the output folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bitalloc.allocator.plan import Plan
from bitalloc.errors import BitallocError
from bitalloc.models.units import FUSED_PROJECTIONS


class ExportError(BitallocError):
    """A plan cannot be exported to the chosen format, or the output folder is not usable."""


def check_output_dir(out_dir: Path) -> None:
    """Refuse an output folder that exists and is not empty (nothing there is ever overwritten)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty; give a new or empty folder")


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder that becomes ``out_dir`` only when the body finishes without error."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check_output_dir(out_dir)
    if out_dir.exists():
        out_dir.rmdir()
    tmp.replace(out_dir)


def fused_groups(units: list[str]) -> list[list[str]]:
    """Units that runtimes fuse into one matrix (q/k/v, gate/up), each group in ``units`` order."""
    by_key: dict[str, list[str]] = {}
    for name in units:
        parent, _, leaf = name.rpartition(".")
        for fused in FUSED_PROJECTIONS:
            if leaf in fused:
                by_key.setdefault(f"{parent}.{'+'.join(fused)}", []).append(name)
    return [g for g in by_key.values() if len(g) > 1]


def check_fused(plan: Plan, scheme_of: dict[str, object], fmt: str) -> None:
    """Raise ExportError when members of a fused group get different schemes in ``fmt``."""
    for group in fused_groups([c.unit for c in plan.assignment]):
        schemes = {str(scheme_of[u]) for u in group}
        if len(schemes) > 1:
            chosen = ", ".join(f"{u.rsplit('.', 1)[-1]}={plan.candidate_of()[u]}" for u in group)
            raise ExportError(
                f"{fmt} fuses {', '.join(group)} into one matrix but the plan gives them different "
                f"schemes ({chosen}); plan with the profile's tie groups (they share one candidate)"
            )
