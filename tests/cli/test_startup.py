"""The CLI's promises about start-up: `--help` never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

PROBE = """
import sys
from cnnctl.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_FREE", file=sys.stderr)
print("OPTUNA_LOADED" if "optuna" in sys.modules else "OPTUNA_FREE", file=sys.stderr)
print("MLFLOW_LOADED" if "mlflow" in sys.modules else "MLFLOW_FREE", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["models", "--help"],
        ["shapes", "--help"],
        ["tune", "--help"],
        ["distill", "--help"],
        ["track", "--help"],
        ["track", "sync", "--help"],
        ["export", "--help"],
        ["--version"],
    ],
)
def test_help_does_not_import_torch(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, cwd=ROOT)
    assert "TORCH_FREE" in proc.stderr and "OPTUNA_FREE" in proc.stderr, proc.stderr
    assert "MLFLOW_FREE" in proc.stderr, proc.stderr


def test_models_lists_and_filters():
    proc = run_cli("models", "resnet*", "--json")
    assert proc.returncode == 0
    import json

    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["resnet8", "resnet20", "resnet32", "resnet56"]
    assert rows[1]["params"] == 272474
    proc = run_cli("models")
    assert "model-a" in proc.stdout and "1,116,970" not in proc.stdout and "1.12M" in proc.stdout


def test_models_pattern_without_match_is_an_error():
    proc = run_cli("models", "nothing*")
    assert proc.returncode != 0 and "cnnctl: error:" in proc.stderr
