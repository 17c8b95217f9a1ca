"""An exponential moving average (EMA) of the network's weights, validated and saved in place of the raw weights.

The average of the last few hundred iterations' weights lies in a flatter, lower part of the loss than the
weights of any one iteration, and it moves less from one validation to the next, so the checkpoint picked by
validation depends less on where the learning rate happened to be: the usual way to steady a short training run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

__all__ = ["WeightEMA"]


class WeightEMA:
    """Keep an EMA of ``network``'s state (parameters and batch-norm statistics); swap it in while validating.

    Attached to the trainer (it is one of the trainer's handlers), it updates the average after every
    iteration; attached to ``validator`` too, it loads the average into ``network`` when the validation starts
    and restores the trained weights when it ends. So the validation scores the average, and the checkpoint
    that validation saves (``model.pt``) holds it; the epoch checkpoints hold the trained weights and this
    object's state (``state_dict``), so a resumed run continues both.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first iterations'
    random weights fade out fast. ``decay`` 0 (or None) turns the average off: nothing is attached.

    Args:
        network: the trained network.
        decay: the weight of the average at each update (e.g. 0.995: a time constant of about 200 iterations).
        validator: the evaluator that validates during training (its STARTED/COMPLETED swap the weights).
    """

    def __init__(self, network: nn.Module, decay: float | None = 0.995, validator: Engine | None = None) -> None:
        decay = float(decay or 0.0)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"WeightEMA: decay must lie in [0, 1), got {decay}.")
        self.network, self.decay, self.validator = network, decay, validator
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0
        self._trained: dict[str, torch.Tensor] | None = None

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self.swap_in)
            self.validator.add_event_handler(Events.COMPLETED, self.swap_out)
            self.validator.add_event_handler(Events.EXCEPTION_RAISED, self._restore_and_raise)

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """One step of the average towards the network's current state."""
        state = self.network.state_dict()
        if not self.shadow:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in state.items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - decay)
            else:
                self.shadow[k].copy_(v)

    @torch.no_grad()
    def swap_in(self, engine: Engine | None = None) -> None:
        """Load the average into the network, keeping the trained weights aside."""
        if not self.shadow or self._trained is not None:
            return
        state = self.network.state_dict()
        self._trained = {k: v.detach().clone() for k, v in state.items()}
        for k, v in state.items():
            v.copy_(self.shadow[k])

    @torch.no_grad()
    def swap_out(self, engine: Engine | None = None) -> None:
        """Put the trained weights back."""
        if self._trained is None:
            return
        for k, v in self.network.state_dict().items():
            v.copy_(self._trained[k])
        self._trained = None

    def _restore_and_raise(self, engine: Engine, e: Exception) -> None:
        self.swap_out()
        raise e

    def state_dict(self) -> dict[str, Any]:
        """The average and its update count (tensors, ints and floats: ``weights_only``-safe)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        shadow = state.get("shadow") or {}
        own = self.network.state_dict()
        if shadow and set(shadow) != set(own):
            raise ValueError("WeightEMA: the saved average does not fit this network (other parameter names).")
        self.shadow = {k: v.detach().clone().to(own[k].device) for k, v in shadow.items()}
