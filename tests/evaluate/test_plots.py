"""`cnnctl plot` and `cnnctl eval --plot-confusion` write real images."""

from __future__ import annotations

import stat

from PIL import Image

from tests.conftest import assert_user_error, run_cli


def test_plot_several_runs(quick_run, tmp_path):
    out = tmp_path / "curves.png"
    proc = run_cli("plot", quick_run, quick_run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 800
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable by others, like any file the user writes
    assert_user_error(run_cli("plot", tmp_path, "-o", tmp_path / "x.png"), "history.json not found")
    assert_user_error(run_cli("plot", quick_run, "-o", tmp_path / "x.txt"), "must end in .png")


def test_eval_plot_confusion(quick_run, tmp_path):
    out = tmp_path / "cm.png"
    proc = run_cli("eval", quick_run, "--plot-confusion", out, "--json")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG"
