"""`cnnctl shapes`: the trace, its arithmetic, and its diagnosis of inputs that do not fit."""

from __future__ import annotations

import json

import pytest
from torch import nn

from cnnctl.models.shapes import trace, visible_rows
from cnnctl.models.tracing import trace_model
from tests.conftest import assert_user_error, run_cli


def test_tiny_flatten_and_params_via_cli():
    proc = run_cli("shapes", "tiny", "--input", "3x32x32")
    assert proc.returncode == 0, proc.stderr
    assert "64x8x8 -> 4,096 features" in proc.stdout
    assert "1,116,970" in proc.stdout


def test_receptive_field_and_jump_worked_by_hand():
    # Conv k3 s1 p1 -> MaxPool k2 s2 -> Conv k3 s1 p1 -> Conv k5 s2 p2 -> MaxPool k3 s1, by hand:
    # rf: 1+2*1=3 | 3+1*1=4, j=2 | 4+2*2=8 | 8+4*2=16, j=4 | 16+2*4=24, j=4
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 8, 5, stride=2, padding=2),
        nn.MaxPool2d(3, stride=1),
    )
    rows = visible_rows(trace(model, (1, 32, 32)).rows, None)
    assert [(r.receptive_field, r.jump) for r in rows] == [(3, 1), (4, 2), (8, 2), (16, 4), (24, 4)]
    assert [r.output_shape[2] for r in rows] == [32, 16, 16, 8, 6]
    assert rows[3].explain == ["H, W: floor((16 + 2*2 - 5)/2) + 1 = 8"]


def test_residual_receptive_field_takes_the_longer_branch():
    rows = visible_rows(trace_model("resnet8", (3, 32, 32)).rows, 2)
    # stem conv 3; block 1 adds 2 convs at jump 1 (+4); block 2: +2 (stride 2) then +4 at jump 2.
    assert [r.receptive_field for r in rows[:5]] == [3, 3, 3, 7, 13]


def test_input_that_does_not_fit_gets_a_diagnosis():
    proc = run_cli("shapes", "tiny", "--input", "1x28x28")
    assert_user_error(proc, "features.0", "expects 3 input channels but got 1", "--fit")
    assert "features.0" in proc.stdout  # the trace up to the failing layer

    proc = run_cli("shapes", "tiny", "--input", "3x28x28")
    assert_user_error(proc, "classifier.0", "expects 4096 input features but got 3136 = 64x7x7", "nn.Linear(3136, 256)")


def test_fit_builds_the_model_for_the_input():
    result = trace_model("tiny", (1, 28, 28), fit=True)
    assert result.diagnosis is None
    assert result.flatten == {"layer": "classifier.0", "from": [64, 7, 7], "features": 3136}


def test_json_and_explain_and_depth():
    proc = run_cli("shapes", "catdog", "--json", "--batch", "4")
    data = json.loads(proc.stdout)
    assert data["params"] == 520706 and data["batch"] == 4
    assert data["flatten"]["from"] == [128, 2, 2]
    proc = run_cli("shapes", "model-c", "--explain")
    assert "floor((28 + 2*0 - 5)/1) + 1 = 24" in proc.stdout
    proc = run_cli("shapes", "resnet20", "--depth", "2")
    assert proc.returncode == 0 and "BasicBlock" in proc.stdout and "conv1" not in proc.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["tiny", "--input", "3x32"], "CxHxW"),
        (["tiny", "--input", "0x32x32"], "at least 1"),
        (["tiny", "--input", "abc"], "CxHxW"),
        (["tiny", "--input", "3x100000x100000"], "too large"),
        (["tinny"], "did you mean tiny"),
        (["tiny", "--batch", "0"], "--batch"),
        (["catdog", "--input", "1x8x8", "--fit"], "larger input"),
    ],
)
def test_bad_arguments_are_one_line(args, needle):
    assert_user_error(run_cli("shapes", *args), needle)


def test_shapes_of_a_run_directory_and_checkpoint(quick_run):
    proc = run_cli("shapes", quick_run, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (
        report["model"] == "model-a"
        and report["input_shape"] == [1, 28, 28]
        and report["rows"][-1]["output_shape"] == [1, 10]
    )
    proc = run_cli("shapes", quick_run / "model.safetensors", "--input", "1x32x32")
    assert_user_error(proc, "expects", "1x28x28")
