"""List library functions over the size limits (outside cnnctl/cli/): more than 80 lines or more
than 10 parameters. The suite runs it (tests/test_code_shape.py); exit 1 when any is found."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES, MAX_PARAMS = 80, 10
ROOT = Path(__file__).resolve().parents[1] / "cnnctl"


def offenders(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "cli" in path.relative_to(root).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
            if lines > MAX_LINES:
                found.append(f"{where}: {lines} lines (max {MAX_LINES})")
            if len(params) > MAX_PARAMS:
                found.append(f"{where}: {len(params)} parameters (max {MAX_PARAMS})")
    return found


if __name__ == "__main__":
    bad = offenders()
    print("\n".join(bad) or "ok")
    sys.exit(1 if bad else 0)
