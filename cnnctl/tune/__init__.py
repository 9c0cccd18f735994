"""`cnnctl tune`: hyperparameter search on Optuna (space.py: what is searched; study.py: where the
study lives and what its trials say; search.py: a worker's loop; report.py: table, JSON, best.toml)."""
