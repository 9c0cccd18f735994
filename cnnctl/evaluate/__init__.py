"""Judging a model: the eval report, metrics, calibration, explanations, plots."""
