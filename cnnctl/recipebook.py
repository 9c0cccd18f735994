"""The recipes that ship inside the package (`cnnctl/recipes/*.toml`) and how `--recipe` finds one.

`--recipe NAME` (no "/", no ".toml") is a shipped recipe; anything else is a file path. Each
recipe starts with a comment block: its first line says what it reproduces, a line starting
"Measured here" its result, and a "Machine:" line the machine that result was measured on;
`cnnctl recipes` lists those. Torch-free (read by shell completion).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cnnctl.errors import UsageError


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    reproduces: str
    result: str
    machine: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "path": str(self.path),
            "reproduces": self.reproduces,
            "result": self.result,
            "machine": self.machine,
        }


def folder() -> Path:
    return Path(str(resources.files("cnnctl").joinpath("recipes")))


def names() -> list[str]:
    return sorted(p.stem for p in folder().glob("*.toml"))


def is_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith(".toml")


def locate(spec: str) -> Path:
    """The file `--recipe SPEC` means: a path as given, or the shipped recipe of that name."""
    if is_path(spec):
        return Path(spec)
    path = folder() / f"{spec}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(spec, names(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(
            f"no shipped recipe {spec!r}; {hint}`cnnctl recipes` lists them (a file needs a path: ./{spec}.toml)"
        )
    return path


def _comments(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def describe(path: Path) -> Recipe:
    lines = _comments(path)
    first = re.match(r"(.+?)(?:\.(?:\s|$)|:\s*$|$)", " ".join(lines[:3]))  # the first sentence
    reproduces = first.group(1).strip() if first else ""
    joined = " ".join(line for line in lines if not line.startswith(("Run:", "Machine")))
    m = re.search(r"Measured here[^:]*?:\s*(.+?)(?:\.(?:\s|$)|$)", joined)
    result = m.group(1).strip() if m else "not measured here"
    machine = next((line.split(":", 1)[1].split(";")[0].strip() for line in lines if line.startswith("Machine")), "")
    return Recipe(path.stem, path, reproduces, result, machine)


def catalogue() -> list[Recipe]:
    return [describe(folder() / f"{n}.toml") for n in names()]
