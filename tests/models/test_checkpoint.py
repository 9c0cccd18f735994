"""cnnctl.models.checkpoint: safetensors files that reload exactly, and refuse what they should."""

from __future__ import annotations

import json

import pytest
import torch

from cnnctl.errors import CheckpointError
from cnnctl.models import create
from cnnctl.models.checkpoint import (
    PICKLE_SUFFIXES,
    load_last,
    load_model,
    model_tensors,
    resolve_checkpoint,
    save_last,
    save_model,
)
from cnnctl.runtime.metadata import DataInfo, Metadata, TrainingInfo
from cnnctl.runtime.modelfile import read as read_checkpoint_metadata
from cnnctl.runtime.preprocess import Preprocess
from cnnctl.train.ema import EMA

pytestmark = pytest.mark.quick


def _meta() -> Metadata:
    return Metadata(
        model="model-a",
        input_shape=(1, 28, 28),
        class_names=tuple(str(i) for i in range(10)),
        preprocess=Preprocess(channels=1, size=(28, 28), mean=[0.13], std=[0.31]),
        data=DataInfo(name="mnist-mini"),
        training=TrainingInfo(epoch=2, metrics={"val_acc": 0.9}),
    )


def _trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, EMA]:
    torch.manual_seed(seed)
    model = create("model-a").to(memory_format=torch.channels_last)  # strided weights: saved contiguous
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = EMA(model, 0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 1, 28, 28)).sum().backward()
        opt.step()
        ema.update()
    return model, opt, ema


def test_model_file_round_trip(tmp_path):
    model, _, _ = _trained()
    save_model(tmp_path / "model.safetensors", model, _meta())
    loaded, meta, path = load_model(tmp_path)
    assert path == tmp_path / "model.safetensors" and meta == _meta() and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert read_checkpoint_metadata(path).kind == "model"
    assert not list(tmp_path.glob("*.tmp*")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_last_file_restores_weights_optimizer_average_and_rng(tmp_path):
    model, opt, ema = _trained()
    torch.manual_seed(123)
    state = {"loop": {"epoch": 2, "step": 2}, "history": [{"epoch": 1}, {"epoch": 2}]}
    save_last(tmp_path / "last.safetensors", model, opt, state, _meta(), ema)
    expected_draw = torch.rand(3)
    other, other_opt, other_ema = _trained(seed=9)
    assert load_last(tmp_path / "last.safetensors", other, other_opt, other_ema) == state
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), other_ema.state_dict().values()):
        assert torch.equal(a, b)
    saved, restored = opt.state_dict(), other_opt.state_dict()
    assert (
        json.loads(json.dumps(saved["param_groups"])) == restored["param_groups"]
    )  # JSON keeps (0.9, 0.999) as a list
    for idx, s in saved["state"].items():
        for key, value in s.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(restored["state"][idx][key])), (idx, key)
    # The model's weights come out of a last file too (eval of last.safetensors), without the rest.
    loaded, meta, _ = load_model(tmp_path / "last.safetensors")
    assert meta.kind == "last" and all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values())
    )
    with pytest.raises(CheckpointError, match="without --ema"):
        save_last(tmp_path / "plain.safetensors", model, opt, state, _meta())
        load_last(tmp_path / "plain.safetensors", other, other_opt, other_ema)


def test_model_tensors_strips_the_last_file_prefix():
    t = torch.zeros(1)
    assert model_tensors({"model/a": t, "optim/0/exp_avg": t, "rng/torch": t, "ema/n_averaged": t}) == {"a": t}
    assert model_tensors({"a": t, "b": t}) == {"a": t, "b": t}


def test_refusals(tmp_path):
    for suffix in PICKLE_SUFFIXES:
        path = tmp_path / f"w{suffix}"
        path.write_bytes(b"\x80\x04junk")
        with pytest.raises(CheckpointError, match="pickled"):
            resolve_checkpoint(path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_checkpoint(tmp_path / "nope.safetensors")
    model, _, _ = _trained()
    wrong = _meta().replace(model="model-c")
    save_model(tmp_path / "wrong.safetensors", model, wrong)
    with pytest.raises(CheckpointError, match="the metadata names the wrong model|do not fit model model-c"):
        load_model(tmp_path / "wrong.safetensors")
