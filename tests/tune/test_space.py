"""The search space: TOML in, every key a train option, every bad range refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnctl.config import TrainConfig, load_recipe
from cnnctl.errors import UsageError
from cnnctl.tune.space import Choice, Range, load_space, parse_space, recipe_space

pytestmark = pytest.mark.quick


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return load_space(path)


def test_ranges_and_choices_are_read_with_the_options_types(tmp_path):
    space = _space(
        tmp_path,
        "lr = { low = 1e-4, high = 3e-2, log = true }\nbatch_size = [64, 128]\nepochs = { low = 2, high = 8, step = 2 }\n"
        'augment = ["none", "flip-crop"]\nmodel = ["tiny", "model-a"]\nema = [0.0, 0.999]\nnesterov = [true, false]\n',
    )
    params = {p.name: p for p in space.params}
    assert params["lr"] == Range("lr", 1e-4, 3e-2, True, None)
    assert params["epochs"] == Range("epochs", 2, 8, False, 2) and params["epochs"].integer
    assert params["batch_size"] == Choice("batch_size", (64, 128))
    assert params["model"].choices == ("tiny", "model-a")
    assert params["nesterov"].choices == (True, False)
    assert space.names == ["lr", "batch_size", "epochs", "augment", "model", "ema", "nesterov"]
    space.check(TrainConfig(model="tiny"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lrr = [0.1, 0.2]", "not a train option (did you mean lr?)"),
        ('data = ["a", "b"]', "same images"),
        ("val_split = [0.1, 0.2]", "same images"),
        ("seed = [0, 1]", "--seed"),
        ("lr = 0.1", "one value"),
        ("lr = []", "empty list"),
        ("lr = { low = 0.1, high = 0.01 }", "low must be below high"),
        ("lr = { low = 0.0, high = 0.1, log = true }", "log range needs low > 0"),
        ("lr = { low = 0.01, high = 0.1, log = true, step = 0.01 }", "not both"),
        ("lr = { low = 0.01, hi = 0.1 }", "a range is"),
        ("epochs = { low = 1.5, high = 4 }", "whole number"),
        ("augment = { low = 1, high = 2 }", "not a number"),
        ('batch_size = [64, "big"]', "batch_size must be int"),
        ("batch_size = [64, 64]", "listed twice"),
        ("", "no options to search"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(UsageError) as err:
        _space(tmp_path, text)
    assert needle in err.value.message and "\n" not in err.value.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lr = { low = 0.0, high = 0.1 }", "lr = 0.0: --lr must be a positive number"),
        ('augment = ["none", "flipcrop"]', "augment = 'flipcrop'"),
        ("label_smoothing = { low = 0.0, high = 1.0 }", "label_smoothing = 1.0"),
        ('scheduler = ["cosine", "cosin"]', "did you mean cosine?"),
    ],
)
def test_every_end_of_a_range_and_every_choice_is_validated_on_the_config(tmp_path, text, needle):
    space = _space(tmp_path, text)
    with pytest.raises(UsageError) as err:
        space.check(TrainConfig(model="tiny"))
    assert needle in err.value.message


def test_a_value_that_another_searched_value_makes_valid_passes(tmp_path):
    # --alternate-flip needs an --augment with flips: valid together with flip-crop, not with none.
    space = _space(tmp_path, 'augment = ["none", "flip-crop"]\nalternate_flip = [true, false]\n')
    space.check(TrainConfig(model="tiny"))
    alone = _space(tmp_path, "alternate_flip = [true, false]\n")
    with pytest.raises(UsageError, match="alternate_flip = True: --alternate-flip needs an --augment with flips"):
        alone.check(TrainConfig(model="tiny"))


def test_a_recipe_carries_its_space_and_train_reads_past_it(tmp_path):
    recipe = tmp_path / "probe.toml"
    recipe.write_text('model = "tiny"\nlr = 0.01\n\n[tune.space]\nlr = { low = 1e-3, high = 1e-1, log = true }\n')
    assert load_recipe(recipe) == {"model": "tiny", "lr": 0.01}
    assert recipe_space(str(recipe)).names == ["lr"]
    assert load_space(recipe).names == ["lr"]  # --space RECIPE.toml reads the same table
    with pytest.raises(UsageError, match="--space SPACE.toml"):
        recipe_space(None)
    plain = tmp_path / "plain.toml"
    plain.write_text('model = "tiny"\n')
    with pytest.raises(UsageError, match="--space SPACE.toml"):
        recipe_space(str(plain))


def test_suggestions_are_optunas_distributions():
    optuna = pytest.importorskip("optuna", reason="Optuna is the tune extra: pip install 'cnnctl[tune]'")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_space(
        {
            "lr": {"low": 1e-3, "high": 1e-1, "log": True},
            "epochs": {"low": 2, "high": 6, "step": 2},
            "optimizer": ["sgd", "adamw"],
            "weight_decay": {"low": 0.0, "high": 0.1},
        },
        "inline",
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = space.suggest(trial)
    assert trial.distributions == {
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
        "epochs": IntDistribution(2, 6, step=2),
        "optimizer": CategoricalDistribution(["sgd", "adamw"]),
        "weight_decay": FloatDistribution(0.0, 0.1),
    }
    assert 1e-3 <= values["lr"] <= 1e-1 and values["epochs"] in (2, 4, 6) and values["optimizer"] in ("sgd", "adamw")
    assert isinstance(values["epochs"], int)
