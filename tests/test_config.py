"""cnnctl.config: one definition of every train option; flags, recipe keys and config.json agree."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cnnctl.config import CHOICES, FIELDS, PANEL_OF, TrainConfig, load_recipe, resolve, validate
from cnnctl.errors import UsageError

pytestmark = pytest.mark.quick

# A value other than the default for every field, of the field's own type.
OTHER = {
    "model": "tiny",
    "data": "cifar10",
    "data_dir": "/d",
    "image_size": "64",
    "mean": "0.5,0.5,0.5",
    "std": "0.2,0.2,0.2",
    "weights": "IMAGENET1K_V1",
    "init": "runs/x",
    "cache_dir": "/c",
    "eval_batch_size": "256",
    "class_weights": "effective",
    "image_root": "/images",
    "path_column": "file",
    "label_column": "tags",
    "label_delim": ";",
    "threshold_rule": "precision=0.9",
    "tracking_uri": "http://mlflow:5000",
    "experiment": "pets",
}


def _other(name: str):
    f = FIELDS[name]
    if name in OTHER:
        return OTHER[name]
    if name in CHOICES:
        return next(c for c in CHOICES[name] if c != f.default)
    if isinstance(f.default, bool):
        return not f.default
    if isinstance(f.default, int):
        return f.default + 1
    if isinstance(f.default, float):
        return round(f.default + 0.05, 4) if f.default < 0.9 else 0.5
    raise AssertionError(name)


def test_every_field_is_a_flag_with_a_panel_and_help():
    from cnnctl.cli.train import train

    params = set(train.__signature__.parameters)
    for name, f in FIELDS.items():
        assert f.metadata["help"].strip(), name
        if f.metadata["cli"]:
            assert name in params and name in PANEL_OF, name


def test_recipe_keys_flags_and_config_json_round_trip(tmp_path):
    """Every option set in a recipe comes back from config.json's fields as the same value."""
    values = {name: _other(name) for name in FIELDS}
    values.update(
        pretrained=False,
        weights="",
        init="",
        unfreeze_at=0,
        keep_bn_stats=False,
        alternate_flip=False,
        augment="flip-crop",
        resize="stretch",
        patience=0,
        loss="ce",
        label_smoothing=0.1,
    )  # combinations validate() refuses are not the point here
    recipe = tmp_path / "all.toml"
    recipe.write_text("\n".join(f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in values.items()) + "\n")
    cfg = resolve(None, str(recipe), {})
    assert cfg.to_dict() == values
    saved = json.loads(json.dumps(cfg.to_dict()))  # what config.json holds
    again = resolve(None, None, {}, base={k: v for k, v in saved.items() if k in FIELDS})
    assert again == cfg
    # Flags given on the command line override the recipe, field by field.
    assert resolve(None, str(recipe), {"lr": 0.5, "epochs": 3}).lr == 0.5
    assert resolve("model-c", str(recipe), {}).model == "model-c"


def test_old_config_json_values_still_resolve():
    """A config.json written before `auto` existed for these fields (ints) resumes."""
    cfg = resolve(None, None, {}, base={"model": "model-a", "eval_batch_size": 1024, "amp": "none"})
    assert cfg.eval_batch_size == "1024"


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"amp": "bf8"}, "--amp 'bf8' is not one of"),
        ({"optimizer": "adamm"}, "did you mean adam"),
        ({"eval_batch_size": "-1"}, "--eval-batch-size"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"val_split": 1.0}, "--val-split"),
        ({"unfreeze_at": 2}, "--unfreeze-at needs --freeze backbone"),
        ({"alternate_flip": True}, "--alternate-flip needs"),
        ({"mean": "a,b"}, "comma-separated numbers"),
    ],
)
def test_validate_names_the_fix(change, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace("'", ".")):
        validate(dataclasses.replace(TrainConfig(model="model-a"), **change))


def test_recipe_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "model-a"\nlearning_rate = 0.1\n')
    with pytest.raises(UsageError, match="unknown key 'learning_rate'"):
        load_recipe(bad)
    bad.write_text('model = "model-a"\nepochs = "ten"\n')
    with pytest.raises(UsageError, match="epochs must be int"):
        load_recipe(bad)
    bad.write_text("model = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(UsageError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="no model given"):
        resolve(None, None, {})
