"""The weights' moving average: updated every iteration, validated and saved in place of the trained weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from scripts.ema import WeightEMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_the_average_follows_the_weights_with_a_warm_up():
    net = _net()
    ema = WeightEMA(net, decay=0.9)
    w = net[0].weight
    ema.update()  # the first update starts from the current weights
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    ema.update()  # decay min(0.9, 3/12) = 0.25: three quarters of the way
    assert torch.allclose(ema.shadow["0.weight"], start + 0.75)
    assert torch.equal(ema.shadow["1.num_batches_tracked"], net[1].num_batches_tracked)


def test_validation_sees_the_average_and_training_continues_from_its_own_weights():
    net = _net()
    seen = []
    validator = Engine(lambda e, b: seen.append(net[0].weight.detach().clone()))
    ema = WeightEMA(net, decay=0.5, validator=validator)

    def step(engine, batch):
        with torch.no_grad():
            net[0].weight.add_(1.0)

    trainer = Engine(step)
    ema.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=1))
    trained = net[0].weight.detach().clone()
    trainer.run([0, 1, 2], max_epochs=1)
    trained += 3.0
    assert torch.allclose(net[0].weight, trained)  # swapped back after validation
    assert torch.allclose(seen[0], ema.shadow["0.weight"]) and not torch.allclose(seen[0], trained)


def test_state_travels_in_a_weights_only_checkpoint_and_zero_turns_it_off(tmp_path):
    net = _net()
    ema = WeightEMA(net, decay=0.99)
    for _ in range(3):
        ema.update()
    torch.save({"ema": ema.state_dict()}, tmp_path / "c.pt")
    other = WeightEMA(_net(), decay=0.99)
    other.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["ema"])
    assert other.updates == 3 and all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    with pytest.raises(ValueError, match="does not fit"):
        WeightEMA(nn.Linear(3, 4)).load_state_dict(ema.state_dict())
    off = WeightEMA(net, decay=0)
    engine = Engine(lambda e, b: None)
    off.attach(engine)
    engine.run([0], max_epochs=1)
    assert not off.enabled and off.shadow == {}
