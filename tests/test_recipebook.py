"""Recipes shipped in the package: `cnnctl recipes`, `recipes show`, `--recipe NAME`, and shell
completion of their names (and of models and choices)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cnnctl.recipebook import catalogue, folder, locate, names
from tests.conftest import ROOT, assert_user_error, run_cli


def test_every_shipped_recipe_is_listed_with_what_it_reproduces_and_its_machine():
    proc = run_cli("recipes", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {p.stem for p in (ROOT / "cnnctl" / "recipes").glob("*.toml")} and "quickstart" in rows
    assert rows["quickstart"]["result"].startswith("97.85% on the 2,000 test digits")
    assert rows["mnist-fast"]["result"].startswith("99.22 / 99.09 / 99.13% test accuracy")
    for r in rows.values():
        assert r["reproduces"]
        if r["result"] != "not measured here":
            assert r["machine"].startswith("AMD EPYC"), r["name"]  # every figure names its machine
    table = run_cli("recipes").stdout
    assert "cifar10-10min" in table and "measured result" in table


def test_show_prints_the_toml_and_unknown_names_are_one_line(tmp_path):
    proc = run_cli("recipes", "show", "quickstart")
    assert proc.returncode == 0 and proc.stdout == (folder() / "quickstart.toml").read_text()
    assert_user_error(run_cli("recipes", "show", "quickstrat"), "did you mean quickstart")
    assert_user_error(run_cli("recipes", "show", "./x.toml"), "is a path")
    assert_user_error(run_cli("train", "--recipe", "mnist-fats", "--dry-run"), "did you mean mnist-fast")
    assert_user_error(run_cli("train", "--recipe", str(tmp_path / "none.toml"), "--dry-run"), "not found")


def test_a_name_is_the_shipped_recipe_and_a_path_is_a_file(tmp_path):
    assert locate("quickstart") == folder() / "quickstart.toml"
    mine = tmp_path / "quickstart.toml"
    mine.write_text((folder() / "quickstart.toml").read_text().replace("epochs = 4", "epochs = 1"))
    assert locate(str(mine)) == mine
    proc = run_cli("train", "--recipe", str(mine), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs"] == 1
    proc = run_cli("train", "--recipe", "quickstart", "--dry-run", "--json")
    assert json.loads(proc.stdout)["epochs"] == 4


def complete(words: str, cache: str) -> tuple[list[str], str]:
    """What bash completion gets for `words` (Typer's protocol, in a real process)."""
    parts = words.split(" ")
    env = {
        **os.environ,
        "_CNNCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
        "CNNCTL_CACHE": cache,
    }
    probe = (
        "import sys\nfrom cnnctl.cli import main\ntry:\n    main()\nexcept SystemExit:\n    "
        "pass\nprint('TORCH' if 'torch' in sys.modules else 'FREE', file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.split(), proc.stderr


def test_completion_of_recipes_choices_and_models(tmp_path):
    got, err = complete("cnnctl train --recipe mnist-model", str(tmp_path))
    assert got == ["mnist-model-a", "mnist-model-b", "mnist-model-c"] and "FREE" in err
    got, err = complete("cnnctl train model-a --optimizer ad", str(tmp_path))
    assert got == ["adam", "adamw"] and "FREE" in err
    assert complete("cnnctl export run --format tr", str(tmp_path))[0] == ["triton"]
    assert complete("cnnctl recipes show cifar10-t", str(tmp_path))[0] == ["cifar10-tiny", "cifar10-tiny3"]
    got, err = complete("cnnctl train resnet", str(tmp_path))  # the first time builds the name cache
    assert got == ["resnet8", "resnet20", "resnet32", "resnet56"]
    got, err = complete("cnnctl shapes resnet", str(tmp_path))  # then it needs no torch
    assert got == ["resnet8", "resnet20", "resnet32", "resnet56"] and "FREE" in err
    assert names() == sorted(r.name for r in catalogue())


def test_show_completion_prints_a_script():
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnctl", "--show-completion", "bash"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert proc.returncode == 0 and "_CNNCTL_COMPLETE=complete_bash" in proc.stdout
