"""A test-only training handler: what each rank of a multi-process run did, written to ``<folder>/probe_rank<r>.json``.

Per step: the domains in the batch, the samples (their first two original landmarks identify them), the loss
and a hash of the weights after the optimizer step; per validation: the metric and the batches this rank ran;
at the start: the handlers attached on this rank. Layered into a run by ``tests/test_distributed.py``.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch.distributed as dist
from ignite.engine import Engine, Events


def _handler_types(engine: Engine) -> list[str]:
    names = set()
    for handlers in engine._event_handlers.values():
        for handler, _, _ in handlers:
            handler = getattr(handler, "__wrapped__", handler)  # tracking's degrading wrappers keep the method
            # a subclass counts as its bases too (SafeCheckpointSaver is a CheckpointSaver)
            names.update(c.__name__ for c in type(getattr(handler, "__self__", handler)).__mro__)
    return sorted(names)


def _weights_hash(network) -> str:
    h = hashlib.sha256()
    for p in network.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Probe:
    def __init__(self, folder: str, network, evaluator) -> None:
        self.folder, self.network, self.evaluator = folder, network, evaluator
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.record: dict = {"rank": self.rank, "steps": [], "validations": [], "completed": False}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.step)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.validated)

    def started(self, engine: Engine) -> None:
        self.record["trainer_handlers"] = _handler_types(engine)
        self.record["evaluator_handlers"] = _handler_types(self.evaluator)

    def step(self, engine: Engine) -> None:
        batch = engine.state.batch  # decollated by MONAI: one dict per sample
        items = batch if isinstance(batch, list) else [dict(zip(batch, v)) for v in zip(*batch.values())]
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self.record["steps"].append(
            {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "domains": [int(item["domain"]) for item in items],
                "samples": [[round(float(v), 2) for v in item["landmarks_original"][:2].reshape(-1)] for item in items],
                "loss": float(loss),
                "weights": _weights_hash(self.network),
            }
        )

    def validated(self, engine: Engine) -> None:
        self.record["validations"].append(
            {"epoch": engine.state.epoch, "batches": engine.state.iteration, "val_mre": engine.state.metrics.get("val_mre")}
        )

    def completed(self, engine: Engine) -> None:
        self.record["completed"] = True
        with open(os.path.join(self.folder, f"probe_rank{self.rank}.json"), "w") as f:
            json.dump(self.record, f)
