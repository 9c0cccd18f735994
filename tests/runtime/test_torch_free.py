"""The run-time layer, serve/ and track/ import without torch (a deployment needs onnxruntime, not
torch; `predict models:/...` resolves through track/registry.py), and none imports MLflow at import
time (only tracking or a models:/ URI may load it).

Each check runs in a fresh interpreter where importing torch raises, so an import of torch at any
depth (a module, or a module it imports) fails the test."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import cnnctl.runtime
import cnnctl.serve
import cnnctl.track

BLOCK = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "mlflow"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok", len(sys.argv) - 1)
"""


def _modules(package) -> list[str]:
    return [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


@pytest.mark.quick
@pytest.mark.parametrize("package", [cnnctl.runtime, cnnctl.serve, cnnctl.track], ids=["runtime", "serve", "track"])
def test_imports_without_torch(package):
    names = _modules(package)
    if package is cnnctl.serve:
        pytest.importorskip("starlette", reason="the serve extra is not installed")
    proc = subprocess.run([sys.executable, "-c", BLOCK, *names], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ok {len(names)}"
