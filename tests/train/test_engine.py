"""The epoch loop's step rules: gradient accumulation, clipping, the weight average, soft targets."""

from __future__ import annotations

import copy

import pytest
import torch

from cnnctl.config import TrainConfig
from cnnctl.data.batches import Batches, Order
from cnnctl.data.bundle import build
from cnnctl.models import create
from cnnctl.train.ema import EMA, Lookahead
from cnnctl.train.engine import Hooks, Loop, Stepping, evaluate, make_loss, train_one_epoch
from cnnctl.train.plan import resolve_preprocessing


@pytest.fixture(scope="module")
def digits():
    # 1,000 real digits of mnist-mini: 15 batches of 64 and one of 40.
    return build(
        resolve_preprocessing(
            TrainConfig(model="model-a", data="mnist-mini", subset=1000, val_split=0.0), None
        ).data_config(),
        lambda m: None,
    )


def _epoch(data, batch: int, accumulate: int, *, clip: float = 0.0, ema: bool = False):
    torch.manual_seed(0)
    model = create("model-a", data.input_shape, len(data.classes))  # no BatchNorm: batch size cannot matter
    average = EMA(model, 0.9) if ema else None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = Batches(data.train, data.prep, batch, channels_last=False, order=Order(shuffle=True, seed=1))
    steps = []
    stats, step = train_one_epoch(
        Loop(model, opt, make_loss("ce", 10), batches),
        batches.epoch(1),
        lambda s: 0.05,
        0,
        stepping=Stepping(accumulate=accumulate, clip_grad=clip, ema=average),
        sizes=batches.sizes(),
        hooks=Hooks(on_step=lambda s, loss, lr: steps.append((s, float(loss)))),
    )
    return model, stats, step, steps, average


def test_accumulating_4_batches_of_16_is_one_batch_of_64(digits):
    big, big_stats, big_step, big_steps, _ = _epoch(digits, 64, 1)
    acc, acc_stats, acc_step, acc_steps, _ = _epoch(digits, 16, 4)
    # 1,000 images: 16 steps either way, the last over 40 images (16 + 16 + 8, weighted by size).
    assert big_step == acc_step == 16 and [s for s, _ in acc_steps] == list(range(1, 17))
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values()):
        # Sums in another order over 16 momentum steps: measured max difference 5e-6 on weights up to 0.25.
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=name)
    # The logged step loss is the mean over the effective batch, as the big batch's own loss.
    assert [loss for _, loss in acc_steps] == pytest.approx([loss for _, loss in big_steps], rel=1e-4)
    assert acc_stats.images == big_stats.images == 1000
    # And it is not vacuous: 4 separate steps of 16 end somewhere else.
    small, *_ = _epoch(digits, 16, 1)
    assert (small.state_dict()["features.0.weight"] - big.state_dict()["features.0.weight"]).abs().max() > 1e-2


def test_clip_grad_bounds_every_update(digits):
    torch.manual_seed(0)
    model = create("model-a", digits.input_shape, 10)
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: the update is lr * clipped gradient
    batches = Batches(digits.train, digits.prep, 64, channels_last=False)
    one = iter([next(iter(batches))])
    train_one_epoch(
        Loop(model, opt, make_loss("ce", 10), one), one, lambda s: 1.0, 0, stepping=Stepping(clip_grad=0.01)
    )
    moved = torch.cat([(a - b).detach().flatten() for a, b in zip(model.parameters(), before.parameters())])
    assert float(moved.norm()) == pytest.approx(0.01, rel=1e-4)


def test_ema_follows_the_warm_up_decay_and_lags_the_model(digits):
    model, _, step, _, ema = _epoch(digits, 64, 1, ema=True)
    assert int(ema.averaged.n_averaged) == step == 16
    got = dict(ema.module.named_parameters())
    differs = [not torch.equal(got[n], p) for n, p in model.named_parameters()]
    assert all(differs)
    # The same average by hand: W <- W + (1 - min(0.9, (1+n)/(10+n))) (W_model - W) after n updates, from step 1.s weights.
    torch.manual_seed(0)
    replay = create("model-a", digits.input_shape, 10)
    opt = torch.optim.SGD(replay.parameters(), lr=0.05, momentum=0.9)
    avg = None
    for n, (x, y) in enumerate(
        Batches(digits.train, digits.prep, 64, channels_last=False, order=Order(shuffle=True, seed=1)).epoch(1)
    ):
        opt.zero_grad()
        make_loss("ce", 10)(replay(x), y).backward()
        opt.step()
        w = [p.detach().clone() for p in replay.parameters()]
        avg = w if avg is None else [a + (1 - min(0.9, (1 + n) / (10 + n))) * (b - a) for a, b in zip(avg, w)]
    for a, b in zip(avg, ema.module.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_losses_take_soft_targets():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    soft = torch.nn.functional.one_hot(y, 3).float()
    for kind in ("ce", "mse"):
        loss = make_loss(kind, 3)
        assert float(loss(logits, soft)) == pytest.approx(float(loss(logits, y)), rel=1e-6)
    smoothed = make_loss("ce", 3, label_smoothing=0.1)
    assert float(smoothed(logits, soft)) == pytest.approx(float(smoothed(logits, y)), rel=1e-6)


def test_test_time_views_and_their_weights():
    """evaluate() with flips and +-1 px shifts sees six views, weighted 1/4, 1/4 and 1/8 x 4."""
    seen: list[torch.Tensor] = []

    class Views(torch.nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:  # one-hot logits that name the view
            seen.append(v)
            return torch.nn.functional.one_hot(torch.full((len(v),), len(seen) - 1), 6).float()

    model = Views()

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    result = evaluate(model, [(x, torch.zeros(2, dtype=torch.int64))], tta_flip=True, tta_shift=1)
    torch.testing.assert_close(result.logits[0], torch.tensor([0.25, 0.25, 0.125, 0.125, 0.125, 0.125]))
    plain, mirror, down, down_mirror, up, up_mirror = seen
    assert (
        torch.equal(plain, x)
        and torch.equal(mirror, x.flip(3))
        and torch.equal(down_mirror, down.flip(3))
        and torch.equal(up_mirror, up.flip(3))
    )
    assert torch.equal(down[..., 1:, 1:], x[..., :-1, :-1]) and torch.equal(
        up[..., :-1, :-1], x[..., 1:, 1:]
    )  # moved by +1 and -1 px
    assert torch.equal(down[..., 0, 1:], x[..., 1, :-1])  # the edge is reflected, not zeros
    seen.clear()
    evaluate(model, [(x, torch.zeros(2, dtype=torch.int64))])
    assert len(seen) == 1


def test_lookahead_pulls_back_towards_the_slow_weights_on_its_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    look = Lookahead(model, every=2, base=0.9, power=1.0)
    w0, r0 = model[0].weight.detach().clone(), model[1].running_mean.clone()
    look.start_epoch(total_steps=4)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(1.0)
        look.after_step(1)  # not a multiple of `every`: nothing happens
        torch.testing.assert_close(model[0].weight, w0 + 1)
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(1.0)
        look.after_step(2)  # rho = 0.9**2 * (2/4): slow = w0 + (1 - rho) * 2, and the model takes it
        rho = 0.81 * 0.5
        torch.testing.assert_close(model[0].weight, w0 + (1 - rho) * 2)
        torch.testing.assert_close(model[1].running_mean, r0 + (1 - rho) * 2)  # buffers too
        assert int(model[1].num_batches_tracked) == 0  # integer buffers are left alone
        model[0].weight.add_(5.0)
        look.end_epoch()  # the epoch's last steps fall back to the slow weights
        torch.testing.assert_close(model[0].weight, w0 + (1 - rho) * 2)
