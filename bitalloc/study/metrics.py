"""Sensitivity metrics a study can search over: name -> a function that builds the full profile.

A metric here turns (model, calibration settings, palette) into a SensitivityProfile. Today only the
Hessian proxy of ``bitalloc.pipeline.run_profile`` exists; add an entry to ``METRICS`` for another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from bitalloc.errors import InvalidInput
from bitalloc.models.loading import LoadedModel
from bitalloc.pipeline import CalibrationSettings, run_profile
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile

ProfileBuilder = Callable[[LoadedModel, CalibrationSettings, Sequence[Candidate]], SensitivityProfile]


def _hessian(
    loaded: LoadedModel, settings: CalibrationSettings, palette: Sequence[Candidate]
) -> SensitivityProfile:
    return run_profile(loaded, settings, palette=palette)


METRICS: Mapping[str, ProfileBuilder] = MappingProxyType({"hessian": _hessian})


def get_metric(name: str) -> ProfileBuilder:
    """The profile builder of metric ``name``; InvalidInput lists the known names."""
    if name not in METRICS:
        raise InvalidInput(f"unknown sensitivity metric {name!r} in the study; known: {', '.join(METRICS)}")
    return METRICS[name]
