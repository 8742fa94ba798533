"""SensitivityProfile: one row per (unit, candidate) with its proxy error and exact bytes.

Saved as ``NAME.parquet`` (the table) beside ``NAME.json`` (metadata: model and corpus hashes,
calibration settings, estimator, the bytes of every tensor left unquantized, and the profile hash).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc.allocator.problem import AllocationProblem
from bitalloc.errors import InvalidInput

PROFILE_SCHEMA = "bitalloc.profile/v1"
COLUMNS = {
    "unit": "object",
    "tie": "object",
    "rows": "int64",
    "cols": "int64",
    "candidate": "object",
    "error": "float64",
    "nbytes": "int64",
}


@dataclass(frozen=True, eq=False)
class SensitivityProfile:
    """The scored palette of a model: ``table`` has the COLUMNS above; ``meta`` is JSON-ready."""

    table: pd.DataFrame
    meta: dict

    def __post_init__(self) -> None:
        missing = set(COLUMNS) - set(self.table.columns)
        if missing:
            raise InvalidInput(f"profile table lacks columns {sorted(missing)}")
        for key in ("model_hash", "corpus_hash", "palette", "unquantized_bytes"):
            if key not in self.meta:
                raise InvalidInput(f"profile metadata lacks {key!r}")

    @property
    def content_hash(self) -> str:
        """sha256 over the table's rows (floats by their exact hex) and the metadata."""
        digest = hashlib.sha256(PROFILE_SCHEMA.encode())
        meta = {k: v for k, v in self.meta.items() if k != "profile_hash"}
        digest.update(json.dumps(meta, sort_keys=True).encode())
        for row in self.table.itertuples(index=False):
            digest.update(
                f"{row.unit}|{row.tie}|{row.rows}|{row.cols}|{row.candidate}|"
                f"{float(row.error).hex()}|{row.nbytes}\n".encode()
            )
        return digest.hexdigest()

    @property
    def model_hash(self) -> str:
        """Hash of the model this profile was measured on."""
        return self.meta["model_hash"]

    def units(self) -> list[str]:
        """Unit names in the order they were profiled."""
        return list(dict.fromkeys(self.table["unit"]))

    def save(self, path: Path | str) -> Path:
        """Write ``path`` (.parquet) and its .json metadata; returns the parquet path."""
        path = Path(path).with_suffix(".parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        table = self.table[list(COLUMNS)].astype(COLUMNS).reset_index(drop=True)
        table.to_parquet(path, index=False)
        meta = dict(self.meta, schema=PROFILE_SCHEMA, profile_hash=self.content_hash)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: Path | str) -> SensitivityProfile:
        """Read a profile written by ``save`` and check its hash."""
        path = Path(path).with_suffix(".parquet")
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise InvalidInput(f"profile {path} needs both {path.name} and {meta_path.name}")
        table = pd.read_parquet(path).astype(COLUMNS)
        meta = json.loads(meta_path.read_text())
        if meta.get("schema") != PROFILE_SCHEMA:
            raise InvalidInput(f"{meta_path} is not a {PROFILE_SCHEMA} file")
        profile = cls(table=table, meta={k: v for k, v in meta.items() if k != "schema"})
        if meta.get("profile_hash") != profile.content_hash:
            raise InvalidInput(f"{path}: content does not match its recorded hash; re-run `bitalloc profile`")
        return profile

    def to_problem(self) -> AllocationProblem:
        """The allocation problem: units x palette, infeasible where a candidate was not scored."""
        units = self.units()
        palette = [c for c in self.meta["palette"] if c in set(self.table["candidate"])]
        u_index = {u: i for i, u in enumerate(units)}
        c_index = {c: i for i, c in enumerate(palette)}
        shape = (len(units), len(palette))
        loss, nbytes = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        feasible = np.zeros(shape, dtype=bool)
        rows = self.table["unit"].map(u_index).to_numpy()
        cols = self.table["candidate"].map(c_index).to_numpy()
        loss[rows, cols] = self.table["error"].to_numpy()
        nbytes[rows, cols] = self.table["nbytes"].to_numpy()
        feasible[rows, cols] = True
        first = self.table.drop_duplicates("unit").set_index("unit").loc[units]
        ties = {t: i for i, t in enumerate(dict.fromkeys(first["tie"]))}
        return AllocationProblem(
            units=tuple(units),
            candidates=tuple(palette),
            loss=loss,
            nbytes=nbytes,
            feasible=feasible,
            numel=(first["rows"] * first["cols"]).to_numpy(dtype=np.int64),
            tie=first["tie"].map(ties).to_numpy(dtype=np.int64),
        )
