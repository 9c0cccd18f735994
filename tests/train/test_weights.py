"""Start weights and freezing: --init from runs and plain state dicts, --freeze, --unfreeze-at."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cnnctl.config import TrainConfig
from cnnctl.data.batches import Batches
from cnnctl.data.bundle import build
from cnnctl.errors import CheckpointError
from cnnctl.models import create
from cnnctl.train.engine import Loop, Stepping, make_loss, train_one_epoch
from cnnctl.train.freezing import Freezer, param_groups
from cnnctl.train.plan import resolve_preprocessing
from cnnctl.train.trainer import make_optimizer
from cnnctl.train.weights import init_from
from tests.conftest import assert_user_error, run_cli, write_mnist_pngs


@pytest.fixture(scope="module")
def three_digits(tmp_path_factory) -> Path:
    """Real digits of classes 0, 1, 2 only, as an image folder (another class list than mnist-mini)."""
    root = tmp_path_factory.mktemp("three")
    write_mnist_pngs(root, per_class=40)
    for d in root.iterdir():
        if d.name not in ("0", "1", "2"):
            shutil.rmtree(d)
    return root


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (model.safetensors holds the best epoch's)."""
    return {
        k.removeprefix("model/"): v
        for k, v in load_file(str(run / "last.safetensors")).items()
        if k.startswith("model/")
    }


def test_init_from_a_run_loads_the_backbone_and_starts_a_new_head(quick_run, three_digits, tmp_path):
    out = tmp_path / "probe"
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        three_digits,
        "--grayscale",
        "--image-size",
        "28",
        "--init",
        quick_run,
        "--freeze",
        "backbone",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--val-split",
        "0.25",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "loaded 4 of 6 tensors; initialised anew: classifier.weight (shape [10, 1568] in the source, [3, 1568] here)"
        in proc.stderr
    )
    source, probe = weights(quick_run), last_weights(out)
    for name in ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"):
        assert probe[name].equal(source[name]), name  # loaded, then frozen: bit-identical
    assert probe["classifier.weight"].shape == (3, 1568)
    config = json.loads((out / "config.json").read_text())
    assert config["init_report"]["loaded"] == 4 and "classifier.bias" in config["init_report"]["initialised_anew"]
    hist = json.loads((out / "history.json").read_text())
    assert hist["epochs"][-1]["val_acc"] >= 0.9  # a linear probe on digit features separates 0/1/2


def test_unfreeze_at_trains_the_backbone_from_that_epoch(quick_run, three_digits, tmp_path):
    out = tmp_path / "ft"
    proc = run_cli(
        "train",
        "model-a",
        "--data",
        three_digits,
        "--grayscale",
        "--image-size",
        "28",
        "--init",
        quick_run,
        "--freeze",
        "backbone",
        "--unfreeze-at",
        "2",
        "--backbone-lr-scale",
        "0.1",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2: the backbone trains from now on" in proc.stderr
    assert not last_weights(out)["features.0.weight"].equal(weights(quick_run)["features.0.weight"])
    # A resumed run repeats the same freeze schedule.
    proc = run_cli("train", "--resume", out, "--epochs", "3")
    assert proc.returncode == 0, proc.stderr


def test_batchnorm_statistics_of_a_frozen_backbone_do_not_move(tmp_path):
    base = tmp_path / "base"
    assert (
        run_cli("train", "resnet8", "--subset", "400", "--epochs", "1", "--batch-size", "50", "--out", base).returncode
        == 0
    )
    probe = tmp_path / "probe"
    proc = run_cli(
        "train",
        "resnet8",
        "--subset",
        "400",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--init",
        base,
        "--freeze",
        "backbone",
        "--lr",
        "0.01",
        "--out",
        probe,
    )
    assert proc.returncode == 0, proc.stderr
    a, b = weights(base), last_weights(probe)
    backbone = [k for k in a if k.startswith("features.")]
    assert any("running_mean" in k for k in backbone)
    assert all(a[k].equal(b[k]) for k in backbone), [k for k in backbone if not a[k].equal(b[k])]
    assert not a["classifier.weight"].equal(b["classifier.weight"])


def test_a_plain_state_dict_with_a_wrapper_prefix_loads(tmp_path):
    torch.manual_seed(1)
    donor = create("tiny", (3, 32, 32), 10)
    save_file(
        {f"module.{k}": v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "plain.safetensors")
    )
    torch.manual_seed(2)
    model = create("tiny", (3, 32, 32), 4)
    report = init_from(model, str(tmp_path / "plain.safetensors"))
    assert len(report.loaded) == len(model.state_dict()) - 2  # all but the last Linear's weight and bias
    assert model.state_dict()["features.0.weight"].equal(donor.state_dict()["features.0.weight"])


class _Planted:
    """Unpickling this would run code (create a file): what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_another_architecture_or_a_code_running_pickle_is_refused(quick_run, tmp_path):
    with pytest.raises(CheckpointError, match="matches only 0%"):
        init_from(create("tiny", (1, 28, 28), 10), str(quick_run))
    assert_user_error(run_cli("train", "tiny", "--init", quick_run, "--out", tmp_path / "x"), "another architecture")
    assert not (tmp_path / "x").exists()  # refused in setup: no run directory left behind
    (tmp_path / "w.pt").write_bytes(b"\x80\x04junk")
    assert_user_error(
        run_cli("train", "model-a", "--init", tmp_path / "w.pt", "--out", tmp_path / "y"), "weights_only=True"
    )
    marker = tmp_path / "code-ran"
    torch.save({"features.0.weight": torch.zeros(3), "evil": _Planted(marker)}, tmp_path / "evil.pth")
    assert_user_error(
        run_cli("train", "model-a", "--init", tmp_path / "evil.pth", "--out", tmp_path / "z"), "weights_only=True"
    )
    assert not marker.exists() and not (tmp_path / "z").exists()
    assert_user_error(run_cli("train", "model-a", "--unfreeze-at", "2"), "needs --freeze backbone")


def test_a_known_layout_that_does_not_line_up_is_refused(tmp_path):
    model = create("model-a", (1, 28, 28), 10)
    names = ["_conv_stem.weight"] + [f"_blocks.{i}.w" for i in range(len(model.state_dict()) - 1)]
    state = {n: torch.zeros(3, 3) for n in names}  # the efficientnet-pytorch names, but other shapes
    torch.save(state, tmp_path / "lite.pth")
    with pytest.raises(CheckpointError, match="tensor 0 .* does not fit .* its layout does not line up"):
        init_from(model, str(tmp_path / "lite.pth"))
    torch.save(dict(list(state.items())[:3]), tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="3 tensors, the model has"):
        init_from(model, str(tmp_path / "short.pth"))


def test_init_reads_a_plain_pth_state_dict_and_unwraps_a_checkpoint(quick_run, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(quick_run / "model.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    model = create("model-a", (1, 28, 28), 10)
    report = init_from(model, str(tmp_path / "wrapped.pth"))
    assert len(report.loaded) == len(state) and not report.skipped
    assert all(model.state_dict()[k].equal(v) for k, v in state.items())


def test_keep_bn_stats_trains_the_backbone_with_its_batchnorm_statistics_fixed():
    from cnnctl.train.freezing import batchnorms

    model = create("tv:resnet18", (3, 32, 32), 2)
    freezer = Freezer(model, "backbone", unfreeze_at=2, keep_bn_stats=True)
    freezer.apply(1)
    assert freezer.apply(2) and all(p.requires_grad for p in model.parameters())
    before = model.bn1.running_mean.clone()
    model.train()
    assert not any(m.training for m in batchnorms(model)) and model.layer1.training
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert (
        model.bn1.running_mean.equal(before)
        and model.conv1.weight.grad is not None
        and model.bn1.weight.grad is not None
    )
    plain = Freezer(model := create("tv:resnet18", (3, 32, 32), 2), "backbone", unfreeze_at=2)
    plain.apply(1), plain.apply(2)
    model.train()
    assert all(m.training for m in batchnorms(model))  # without it, BatchNorm trains as usual once unfrozen
    assert_user_error(run_cli("train", "model-a", "--keep-bn-stats"), "--unfreeze-at")


def test_param_groups_give_the_backbone_its_own_rate():
    model = create("model-a")
    freezer = Freezer(model, "backbone")
    groups = param_groups(model, freezer, 0.1)
    assert [g.name for g in groups] == ["head", "backbone"] and groups[1].lr_scale == 0.1
    assert freezer.apply(1) and not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def _fake_torchvision_weights(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """resnet18 weights (seeded, not ImageNet's) under the name torchvision's API expects in the hub cache."""
    import torchvision

    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)  # the format torchvision publishes; cnnctl reads it with weights_only=True
    return path, state


def test_pretrained_torchvision_weights_come_from_the_torch_hub_cache(tmp_path):
    from tests.conftest import PETS_MINI

    _, state = _fake_torchvision_weights(tmp_path / "torch")
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "tv:resnet18",
        "--pretrained",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--iters",
        "2",
        "--batch-size",
        "8",
        "--freeze",
        "backbone",
        "--out",
        out,
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "--pretrained ResNet18_Weights.IMAGENET1K_V1: loaded 120 of 122 tensors; initialised anew: fc.weight"
        in proc.stderr
    )
    got = last_weights(out)
    assert got["conv1.weight"].equal(state["conv1.weight"]) and got["layer4.1.bn2.running_var"].equal(
        state["layer4.1.bn2.running_var"]
    )
    assert got["fc.weight"].shape == (2, 512)
    meta = json.loads((out / "config.json").read_text())
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406] and meta["preprocess"]["std"] == [0.229, 0.224, 0.225]
    # torchvision's Resize(256) + CenterCrop(224), scaled to the 64-pixel input: shorter side 73, centre 64.
    assert (
        meta["preprocess"]["resize"] == "crop"
        and meta["preprocess"]["resize_size"] == 73
        and meta["preprocess"]["size"] == [64, 64]
    )
    assert meta["preprocess"]["interpolation"] == "bilinear"  # resnet18's weights were prepared with bilinear


def test_pretrained_offline_without_the_file_is_one_line_and_leaves_nothing(tmp_path):
    from tests.conftest import PETS_MINI

    # No network here, and an unroutable proxy makes sure of it elsewhere: the download must fail.
    env = {
        "TORCH_HOME": str(tmp_path / "empty"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    proc = run_cli(
        "train",
        "tv:resnet18",
        "--pretrained",
        "--data",
        PETS_MINI,
        "--image-size",
        "64",
        "--iters",
        "1",
        "--out",
        tmp_path / "run",
        env=env,
    )
    assert_user_error(
        proc,
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        str(tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"),
    )
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert_user_error(run_cli("train", "model-a", "--pretrained"), "tv:NAME")
    assert_user_error(run_cli("train", "tv:resnet18", "--weights", "IMAGENET9K"), "IMAGENET1K_V1")


def test_fine_tuned_runs_work_downstream_under_torchrun_with_int8_export_and_plot(quick_run, three_digits, tmp_path):
    from tests.train.test_distributed import torchrun

    out = tmp_path / "ddp"
    proc = torchrun(
        "train",
        "model-a",
        "--data",
        three_digits,
        "--grayscale",
        "--image-size",
        "28",
        "--init",
        quick_run,
        "--freeze",
        "backbone",
        "--unfreeze-at",
        "2",
        "--backbone-lr-scale",
        "0.1",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        out,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2: the backbone trains from now on" in proc.stderr  # DDP re-wrapped with the whole model trainable
    # Epoch 1 trained the DDP-wrapped head on stored features: one entry per split on this machine,
    # computed by whichever rank took the lock first (rank 0 logs computing it, or reading it).
    assert "epochs up to 1: the head (classifier) trains on the stored features" in proc.stderr
    for what in ("training", "validation"):
        assert re.search(
            rf"running the frozen backbone once over \d+ {what}|features: {what} images from features-", proc.stderr
        ), what
    assert len(list((tmp_path / "cache").glob("features-*.json"))) == 2 and not list(
        (tmp_path / "cache").glob(".features-*")
    )
    assert not last_weights(out)["features.0.weight"].equal(weights(quick_run)["features.0.weight"])
    proc = run_cli("export", out, "--int8", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["int8"]["output"].endswith("model.int8.onnx")
    rows = run_cli(
        "predict", out / "model.int8.onnx", *sorted(three_digits.rglob("*.png"))[:5], "--json"
    ).stdout.splitlines()
    assert len(rows) == 5 and all(json.loads(r)["top"][0]["label"] in ("0", "1", "2") for r in rows)
    pytest.importorskip("matplotlib")
    assert (
        run_cli("plot", out, "-o", tmp_path / "curves.png").returncode == 0
        and (tmp_path / "curves.png").stat().st_size > 1000
    )


def test_the_weights_preprocessing_fills_what_the_flags_leave_open():
    from cnnctl.train.plan import resolve_preprocessing as _preprocessing_defaults
    from cnnctl.train.weights import pretrained_weights

    bicubic = pretrained_weights("tv:efficientnet_b0", "DEFAULT")  # torchvision prepared these with bicubic resampling
    cfg = _preprocessing_defaults(TrainConfig(model="tv:efficientnet_b0", data="photos/"), bicubic)
    assert (cfg.interpolation, cfg.resize, cfg.image_size, cfg.crop_pct) == ("bicubic", "crop", "224", 224 / 256)
    assert cfg.mean == "0.485,0.456,0.406"
    mine = _preprocessing_defaults(
        TrainConfig(
            model="tv:efficientnet_b0",
            data="photos/",
            interpolation="bilinear",
            resize="stretch",
            image_size="64",
            mean="0.5,0.5,0.5",
            std="0.2,0.2,0.2",
        ),
        bicubic,
    )
    assert (mine.interpolation, mine.resize, mine.image_size, mine.mean) == ("bilinear", "stretch", "64", "0.5,0.5,0.5")
    plain = _preprocessing_defaults(TrainConfig(model="tiny", data="photos/"), None)
    assert (plain.interpolation, plain.resize) == ("bilinear", "stretch")


def test_bn_bias_lr_scale_fixes_batchnorm_weights_and_scales_their_bias_steps():
    data = build(
        resolve_preprocessing(
            TrainConfig(model="fastnet-s", data="mnist-mini", subset=64, val_split=0.0), None
        ).data_config(),
        lambda m: None,
    )
    batch = next(iter(Batches(data.train, data.prep, 64, channels_last=False)))

    def one_step(scale: float) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = create("fastnet-s", data.input_shape, 10)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(
            model="fastnet-s", optimizer="sgd", momentum=0.0, lr=0.01, weight_decay=0.0, bn_bias_lr_scale=scale
        )
        groups = param_groups(model, None, 1.0, scale)
        opt = make_optimizer(cfg, groups)
        train_one_epoch(
            Loop(model, opt, make_loss("ce", 10), None),
            iter([batch]),
            lambda s: 0.01,
            0,
            stepping=Stepping(lr_scales=[g.lr_scale for g in groups]),
        )
        return {k: v - before[k] for k, v in model.state_dict().items() if v.is_floating_point()}, opt

    plain, _ = one_step(0.0)
    scaled, opt = one_step(64.0)
    norms = [
        n for n, m in create("fastnet-s", data.input_shape, 10).named_modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert len(norms) == 7 and [g.get("name") for g in opt.param_groups] == ["all", "bn_bias"]
    for name, delta in plain.items():
        layer, kind = name.rsplit(".", 1)
        if layer in norms and kind == "weight":
            assert delta.abs().max() > 0 and not scaled[name].any(), name  # trained without the flag, fixed with it
        elif layer in norms and kind == "bias":
            assert delta.abs().max() > 0, name
            torch.testing.assert_close(
                scaled[name], 64 * delta, rtol=1e-4, atol=1e-7, msg=name
            )  # the same gradient, 64 x the rate
        else:  # convolutions, the head and the running statistics: the same first step
            torch.testing.assert_close(scaled[name], delta, rtol=1e-5, atol=1e-8, msg=name)


def test_bn_bias_lr_scale_keeps_the_weight_decay_per_step():
    model = create("fastnet-s", (3, 32, 32), 10)
    cfg = TrainConfig(model="fastnet-s", optimizer="sgd", lr=0.1, weight_decay=5e-4, bn_bias_lr_scale=64.0)
    groups = param_groups(model, Freezer(model, "backbone"), 0.5, 64.0)
    opt = make_optimizer(cfg, groups)
    assert [(g.name, g.lr_scale) for g in groups] == [("head", 1.0), ("backbone", 0.5), ("bn_bias", 32.0)]
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == [
        ("head", 5e-4),
        ("backbone", 5e-4),
        ("bn_bias", 5e-4 / 64),
    ]
    # Every parameter but the BatchNorm weights is optimised, once.
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    bn_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()} - bn_weights
    assert_user_error(run_cli("train", "fastnet-s", "--bn-bias-lr-scale", "-1"), "cannot be negative")
