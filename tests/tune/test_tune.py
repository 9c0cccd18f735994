"""`cnnctl tune` through the real CLI on real digits: trials as run directories, pruning, a seeded
study that repeats, resume, workers sharing one study (SQLite, PostgreSQL, a journal file), a
worker killed with SIGKILL, frozen-backbone trials on cached features, and the one-line refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PETS_MINI, ROOT, assert_user_error, run_cli, write_mnist_pngs

pytest.importorskip("optuna", reason="cnnctl tune needs Optuna: pip install 'cnnctl[tune]'")

# 600 training digits of mnist-mini (validated on 800 of its held-out ones), a few epochs each.
BASE = [
    "model-a",
    "--data",
    "mnist-mini",
    "--subset",
    "600",
    "--batch-size",
    "100",
    "--optimizer",
    "sgd",
    "--threads",
    "1",
]


def _space(tmp_path: Path, text: str = "lr = { low = 1e-3, high = 0.2, log = true }\n") -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _tune(*args: object, **kw) -> dict:
    proc = run_cli("tune", *map(str, args), "--json", **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _history(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "history.json").read_text())


def test_a_study_is_trials_as_run_directories_and_a_recipe_that_reproduces_the_best(tmp_path):
    out = tmp_path / "study"
    info = _tune(*BASE, "--epochs", "2", "--space", _space(tmp_path), "--trials", "3", "--out", out)
    assert info["study"] == "study" and info["metric"] == "val_acc" and info["direction"] == "maximize"
    assert info["finished"] == 3 and sorted(t["number"] for t in info["trials"]) == [0, 1, 2]
    done = [t["value"] for t in info["trials"] if t["state"] == "complete"]
    assert done == sorted(done, reverse=True)  # ranked, best first
    config0 = json.loads((out / "trial-0000" / "config.json").read_text())
    assert config0["lr"] == 1e-3  # the first trial is the config's own value (inside the space)
    for trial in info["trials"]:
        run_dir = Path(trial["run_dir"])
        assert run_dir == (out / f"trial-{trial['number']:04d}").resolve()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["lr"] == pytest.approx(trial["params"]["lr"]) and config["model"] == "model-a"
        assert "test" not in _history(str(run_dir))  # a search never looks at the test split
    best = info["best"]
    assert best == info["trials"][0] and best["value"] == max(
        t["value"] for t in info["trials"] if t["state"] == "complete"
    )
    # The best trial is an ordinary run directory: eval reads it.
    evaluated = run_cli("eval", best["run_dir"], "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    # best.toml retrains the best trial: the same validation accuracy at the same epoch.
    again = run_cli("train", "--recipe", out / "best.toml", "--out", tmp_path / "again", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])["summary"]
    record = next(r for r in _history(str(tmp_path / "again"))["epochs"] if r["epoch"] == summary["best_epoch"])
    assert record["val_acc"] == pytest.approx(best["value"], abs=1e-9)
    assert (out / "tune.png").stat().st_size > 10_000
    # --show reads the same study later, as a table and as JSON.
    assert _tune("--show", out) == info
    table = run_cli("tune", "--show", out)
    assert table.returncode == 0 and "rank" in table.stdout and f"trial-{best['number']:04d}" in table.stdout


def test_the_pruner_stops_trials_that_are_clearly_worse(tmp_path):
    space = _space(tmp_path, "lr = [0.05, 1e-6]\n")
    info = _tune(
        *BASE,
        "--epochs", "4",
        "--space", space,
        "--trials", "6",
        "--search-sampler", "random",
        "--startup-trials", "1",
        "--seed", "1",
        "--out", tmp_path / "pruned",
    )  # fmt: skip
    trials = sorted(info["trials"], key=lambda t: t["number"])
    first_good = next(t["number"] for t in trials if t["params"]["lr"] == 0.05)
    hopeless = [t for t in trials if t["params"]["lr"] == 1e-6 and t["number"] > first_good]
    assert hopeless, "the seeded sampler drew no hopeless trial after a good one"
    for t in hopeless:  # a rate of 1e-6 learns nothing: stopped after its first epochs
        assert t["state"] == "pruned" and t["epochs"] < 4, t
        history = _history(t["run_dir"])
        assert history["stopped"] == "pruned" and history["pruned_at_epoch"] == t["epochs"]
        assert (Path(t["run_dir"]) / "model.safetensors").is_file()  # still a run directory
    assert info["finished"] == 6 and all(t["state"] == "complete" for t in trials if t["params"]["lr"] == 0.05)


def test_a_seeded_study_repeats_and_a_resumed_one_goes_on_as_if_uninterrupted(tmp_path):
    args = [*BASE, "--epochs", "1", "--space", _space(tmp_path), "--pruner", "none", "--search-sampler", "random"]
    whole = _tune(*args, "--seed", "3", "--trials", "4", "--out", tmp_path / "whole")
    # Resumed from a journal file, the storage for a shared file system.
    parts = ["--seed", "3", "--storage", f"journal:{tmp_path / 'parts.log'}", "--out", tmp_path / "parts"]
    _tune(*args, *parts, "--trials", "2")
    resumed = _tune(*args, *parts, "--trials", "4")
    other = _tune(*args, "--seed", "4", "--trials", "2", "--out", tmp_path / "other")

    def drawn(info: dict) -> list[float]:
        return [t["params"]["lr"] for t in sorted(info["trials"], key=lambda t: t["number"])]

    assert sorted(t["number"] for t in resumed["trials"]) == [0, 1, 2, 3]
    assert drawn(resumed) == drawn(whole)
    assert drawn(other) != drawn(whole)[:2]
    # TPE's own draws (its random start-up) repeat too.
    tpe = [*BASE, "--epochs", "1", "--space", _space(tmp_path), "--pruner", "none", "--trials", "2", "--seed", "5"]
    assert drawn(_tune(*tpe, "--out", tmp_path / "tpe1")) == drawn(_tune(*tpe, "--out", tmp_path / "tpe2"))


def _worker(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnctl", "tune", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_share_one_study_with_distinct_trials(tmp_path, kind, request):
    storage = request.getfixturevalue("postgres_url") if kind == "postgresql" else f"sqlite:///{tmp_path / 'shared.db'}"
    space = _space(tmp_path)
    args = [*BASE, "--epochs", "1", "--space", space, "--trials", "5", "--storage", storage, "--study", f"two-{kind}"]
    workers = [_worker(*args, "--out", tmp_path / f"w{i}", "--json") for i in (1, 2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    infos = [json.loads(out) for out, _ in outputs]
    trials = infos[0]["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3, 4]
    assert sum(t["state"] in ("complete", "pruned") for t in trials) == 5
    trained = [sum(1 for t in trials if Path(t["run_dir"]).parent == (tmp_path / f"w{i}").resolve()) for i in (1, 2)]
    assert min(trained) >= 1 and sum(trained) == 5, trained  # both worked, on distinct trials
    assert infos[1]["trials"] == trials  # both see one study


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_it_failed_and_the_study_resumes(tmp_path):
    out = tmp_path / "killed"
    args = [
        *BASE[:3],
        "--subset",
        "600",
        *BASE[5:],
        "--epochs",
        "12",
        "--space",
        _space(tmp_path),
        "--trials",
        "2",
        "--heartbeat",
        "1",
        "--out",
        out,
    ]
    victim = _worker(*args)
    deadline = time.monotonic() + 120
    while not (out / "trial-0000" / "history.json").exists():  # an epoch of trial 0 is done
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read() if victim.stderr else ""
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    # The same command again: it resumes the study to 2 finished trials.
    resumed = run_cli("tune", *args, "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads(resumed.stdout)
    states = {t["number"]: t["state"] for t in info["trials"]}
    assert states[0] == "fail"  # its worker stopped beating: marked failed, not left running
    assert "killed" in next(t["note"] for t in info["trials"] if t["number"] == 0)
    assert info["finished"] == 2 and sorted(states) == [0, 1, 2]
    assert _history(str(out / "trial-0000"))["epochs"]  # what the killed trial finished is still there


def test_frozen_backbone_trials_share_one_feature_pass(tmp_path, mobilenet_torch_home):
    space = _space(tmp_path, "lr = { low = 1e-3, high = 1e-1, log = true }\nlabel_smoothing = [0.0, 0.1]\n")
    proc = run_cli(
        "tune", "tv:mobilenet_v2", "--weights", "IMAGENET1K_V1", "--freeze", "backbone", "--data", PETS_MINI,
        "--image-size", "96", "--epochs", "3", "--batch-size", "16", "--val-split", "0.25",
        "--space", space, "--trials", "3", "--pruner", "none", "--out", tmp_path / "probe", "--json",
        env={"TORCH_HOME": str(mobilenet_torch_home)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["finished"] == 3
    # One pass of the frozen backbone over the training images and one over the validation images,
    # for the whole study; every trial trains its head on the stored features.
    assert proc.stderr.count("running the frozen backbone once over") == 2, proc.stderr
    assert proc.stderr.count("the head (classifier) trains on the stored features") == 3


def test_one_line_refusals(tmp_path):
    bad = _space(tmp_path, "lrr = [0.1]\n")
    assert_user_error(run_cli("tune", *BASE, "--space", bad, "--out", tmp_path / "a"), "did you mean lr?")
    space = _space(tmp_path)
    assert_user_error(
        run_cli("tune", *BASE, "--lr", "0.1", "--space", space, "--out", tmp_path / "a"), "--lr is searched"
    )
    assert_user_error(run_cli("tune", *BASE, "--space", space), "--out DIR")
    assert_user_error(run_cli("tune", *BASE, "--out", tmp_path / "a"), "--space SPACE.toml")
    assert_user_error(run_cli("tune", "--show", tmp_path), "not a cnnctl tune folder")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert_user_error(run_cli("tune", *BASE, "--space", space, "--out", tmp_path / "run"), "training run's directory")
    assert_user_error(
        run_cli("tune", *BASE, "--space", space, "--metric", "val_map", "--out", tmp_path / "a"), "multi-label"
    )
    models = _space(tmp_path, 'model = ["model-a", "model-z"]\n')
    assert_user_error(run_cli("tune", *BASE, "--space", models, "--out", tmp_path / "a"), "model = 'model-z'")
    assert not (tmp_path / "a").exists()


def test_a_study_refuses_other_terms_and_changed_data(tmp_path):
    photos = tmp_path / "digits"
    write_mnist_pngs(photos, per_class=8)
    args = ["model-a", "--data", photos, "--epochs", "1", "--batch-size", "20", "--val-split", "0.25", "--threads", "1"]
    out = tmp_path / "study"
    _tune(*args, "--space", _space(tmp_path), "--trials", "1", "--out", out)
    other = _space(tmp_path, "lr = { low = 1e-4, high = 0.2, log = true }\n")
    assert_user_error(run_cli("tune", *args, "--space", other, "--trials", "2", "--out", out), "searches space")
    assert_user_error(
        run_cli("tune", *args, "--augment", "shift", "--space", _space(tmp_path), "--trials", "2", "--out", out),
        "augment",
    )
    # One folder, one study: another study's trials would overwrite this one's run directories.
    assert_user_error(
        run_cli("tune", *args, "--space", _space(tmp_path), "--study", "other", "--trials", "2", "--out", out),
        "holds study 'study'",
    )
    extra = next(photos.glob("3/*.png"))
    (photos / "3" / "copy.png").write_bytes(extra.read_bytes())
    assert_user_error(
        run_cli("tune", *args, "--space", _space(tmp_path), "--trials", "2", "--out", out), "data changed"
    )


@pytest.mark.slow
def test_under_torchrun_each_trial_trains_data_parallel_and_rank_0_prunes(tmp_path):
    from tests.train.test_distributed import torchrun

    out = tmp_path / "ddp"
    proc = torchrun(
        "tune", *BASE, "--epochs", "3", "--space", _space(tmp_path, "lr = [0.05, 1e-6]\n"), "--trials", "3",
        "--search-sampler", "random", "--startup-trials", "1", "--seed", "1", "--out", out, "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)  # rank 0 alone prints
    assert info["finished"] == 3 and sorted(t["number"] for t in info["trials"]) == [0, 1, 2]
    for t in info["trials"]:
        assert json.loads((Path(t["run_dir"]) / "config.json").read_text())["world_size"] == 2
    trials = sorted(info["trials"], key=lambda t: t["number"])
    first_good = next(t["number"] for t in trials if t["params"]["lr"] == 0.05)
    hopeless = [t for t in trials if t["params"]["lr"] == 1e-6 and t["number"] > first_good]
    assert hopeless and all(t["state"] == "pruned" for t in hopeless), trials
    assert all(_history(t["run_dir"])["stopped"] == "pruned" for t in hopeless)


def test_timeout_starts_no_trial_that_cannot_finish_in_it(tmp_path):
    proc = run_cli(
        "tune", *BASE, "--epochs", "50", "--time-limit", "1.5", "--space", _space(tmp_path), "--trials", "5",
        "--timeout", "2", "--out", tmp_path / "budget", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    # Trial 0 fits (1.5 s of --time-limit in 2 s); after it, less than 1.5 s is left: no trial 1.
    assert [t["number"] for t in info["trials"]] == [0] and info["finished"] == 1
    assert "--timeout 2 s: no time for another trial" in proc.stderr
    assert _history(info["trials"][0]["run_dir"])["stopped"] == "time-limit"


def test_cmaes_and_hyperband(tmp_path):
    space = _space(tmp_path, "lr = { low = 1e-3, high = 0.2, log = true }\nweight_decay = { low = 0.0, high = 1e-3 }\n")
    info = _tune(
        *BASE, "--epochs", "3", "--space", space, "--trials", "5", "--search-sampler", "cmaes",
        "--startup-trials", "2", "--pruner", "hyperband", "--out", tmp_path / "cma",
    )  # fmt: skip
    assert info["finished"] == 5 and sorted(t["number"] for t in info["trials"]) == [0, 1, 2, 3, 4]
    for t in info["trials"]:
        assert 1e-3 <= t["params"]["lr"] <= 0.2 and 0.0 <= t["params"]["weight_decay"] <= 1e-3
    assert len({t["params"]["lr"] for t in info["trials"]}) == 5


def test_without_optuna_it_is_one_line_naming_the_extra(tmp_path):
    probe = (
        "import sys; sys.modules['optuna'] = None\n"  # as if it were not installed
        "from cnnctl.cli import main\n"
        f"main(['tune', 'model-a', '--space', {str(_space(tmp_path))!r}, '--out', {str(tmp_path / 'x')!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert_user_error(proc, "pip install 'cnnctl[tune]'")
    assert not (tmp_path / "x").exists()
