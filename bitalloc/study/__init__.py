"""Optuna studies over the choices a plan depends on (palette, groups, metric, calibration, pins, budget).

Imports optuna lazily: only ``storage``, ``runner``, ``objective`` and ``report`` need it.
"""
