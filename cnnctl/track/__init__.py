"""Experiment tracking and the model registry on MLflow (`--track mlflow`, `cnnctl track sync`,
`cnnctl export --register`, `models:/NAME/VERSION` and `models:/NAME@ALIAS` model arguments).

Nothing here imports mlflow at module level: `client.mlflow_client` is the one place that does,
and only a run with `--track mlflow`, `track sync`, `export --register` or a `models:/` URI calls it.

- record.py: RUN/mlflow.json, what of a run directory has reached which MLflow run.
- sender.py: the one path that sends a run directory (params, tags, per-epoch metrics, test
  metrics, files, status) and records what arrived; used live and by `track sync`.
- tracker.py: the background thread a training run sends through (bounded, never blocking).
- registry.py: registering an export, and resolving `models:/` URIs into the local cache.
"""
