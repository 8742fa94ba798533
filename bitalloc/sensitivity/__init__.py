"""Sensitivity: calibration statistics and per-(unit, candidate) error profiles."""
