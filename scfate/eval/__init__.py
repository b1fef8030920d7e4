"""Evaluation: the field's metrics (metrics.py), baselines (baselines.py), the runner and the eval JSON (runner.py),
and Table 1 from saved JSONs (report.py)."""
