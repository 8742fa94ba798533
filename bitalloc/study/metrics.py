"""Sensitivity metrics a study can search over: name -> a function that builds the full profile.

A metric here turns (model, calibration settings, palette) into a SensitivityProfile: every metric that
``bitalloc.pipeline.run_profile`` offers (Hessian proxy, Fisher, AWQ, SliM-LLM, weight MSE, HIGGS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType

from bitalloc.errors import InvalidInput
from bitalloc.models.loading import LoadedModel
from bitalloc.pipeline import PIPELINE_METRICS, CalibrationSettings, run_profile
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import SensitivityProfile

ProfileBuilder = Callable[[LoadedModel, CalibrationSettings, Sequence[Candidate]], SensitivityProfile]


def _profile(
    metric: str, loaded: LoadedModel, settings: CalibrationSettings, palette: Sequence[Candidate]
) -> SensitivityProfile:
    return run_profile(loaded, settings, palette=palette, metric=metric)


METRICS: Mapping[str, ProfileBuilder] = MappingProxyType({m: partial(_profile, m) for m in PIPELINE_METRICS})


def get_metric(name: str) -> ProfileBuilder:
    """The profile builder of metric ``name``; InvalidInput lists the known names."""
    if name not in METRICS:
        raise InvalidInput(f"unknown sensitivity metric {name!r} in the study; known: {', '.join(METRICS)}")
    return METRICS[name]
