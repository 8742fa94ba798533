"""Full profiles cached on disk by (model, metric, calibration settings, palette); subsets by row filtering.

A study profiles each calibration setting once over the union palette of its space; a trial's palette
is a filter over that table's rows. Concurrent workers on one machine serialize on a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bitalloc.models.loading import LoadedModel, cache_dir
from bitalloc.pipeline import CalibrationSettings
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile
from bitalloc.study.metrics import get_metric


def profile_key(
    model_hash: str, metric: str, settings: CalibrationSettings, palette: Sequence[Candidate]
) -> str:
    """The cache key of a full profile."""
    doc = [model_hash, metric, asdict(settings), sorted(c.name for c in palette)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:24]


def profile_path(
    model_hash: str, metric: str, settings: CalibrationSettings, palette: Sequence[Candidate]
) -> Path:
    """Where that profile is cached (``$BITALLOC_CACHE/study-profiles/KEY.parquet``)."""
    return cache_dir() / "study-profiles" / f"{profile_key(model_hash, metric, settings, palette)}.parquet"


def full_profile(
    loaded: LoadedModel, metric: str, settings: CalibrationSettings, palette: Sequence[Candidate]
) -> SensitivityProfile:
    """The profile of ``palette`` under ``settings``: from the cache, else measured once and cached."""
    path = profile_path(loaded.model_hash, metric, settings, palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and path.with_suffix(".json").exists():
            return SensitivityProfile.load(path)
        profile = get_metric(metric)(loaded, settings, palette)
        tmp = path.with_name(f"tmp-{path.name}")
        profile.save(tmp)
        tmp.with_suffix(".json").replace(path.with_suffix(".json"))
        tmp.replace(path)
        return profile


def subset(profile: SensitivityProfile, palette: Sequence[Candidate]) -> SensitivityProfile:
    """The rows of ``profile`` whose candidate is in ``palette`` (the palette order kept)."""
    names = [c.name for c in palette]
    table = profile.table[profile.table["candidate"].isin(set(names))].reset_index(drop=True)
    return SensitivityProfile(table=table, meta=dict(profile.meta, palette=names))
