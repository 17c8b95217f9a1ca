"""One image at a time through the inference workflow's own objects, for the servers (MONAI Label, MLflow).

``run inference`` streams a dataset through a MONAI ``SupervisedEvaluator``; a server gets one image per request
and has no dataset to stream. :class:`ImagePredictor` takes from a parsed ``inference.yaml`` the same objects
the evaluator is built from (``preprocessing``, ``prepare_batch``, ``mirror_inferer``, and the
``landmark_postprocessing`` list: orientation, decoding, refinement, review flag) and runs them on one item, as
the evaluator runs them on a batch of one. Nothing is copied, so a served model answers as ``run inference`` does,
mirrored images, the refinement stage and the review flag included.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.data import decollate_batch, list_data_collate
from monai.transforms import Compose

from .checkpoints import CheckpointError, read_checkpoint

__all__ = ["ImagePredictor"]


class ImagePredictor:
    """The inference config's network and transforms for one checkpoint, applied to single items.

    Args:
        parser: a ``monai.bundle.ConfigParser`` of ``inference.yaml`` with ``ckpt_path`` set (and any overrides).
        checkpoint: the checkpoint's contents where the caller has read them already (else read from ``ckpt_path``).

    Raises:
        CheckpointError: the checkpoint's weights do not fit the configured network.
    """

    def __init__(self, parser: Any, checkpoint: Mapping[str, Any] | None = None) -> None:
        ckpt_path = parser.get_parsed_content("ckpt_path")
        ckpt = checkpoint if checkpoint is not None else read_checkpoint(ckpt_path, "cpu")
        self.anatomies = parser.get_parsed_content("anatomies")
        self.anatomies.load_state_dict(ckpt.get("anatomies", {}))  # the checkpoint's own, in its domain order
        self.device = parser.get_parsed_content("device")
        self.amp = bool(parser.get_parsed_content("amp"))
        self.network = parser.get_parsed_content("network")
        try:
            self.network.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path}: does not fit the bundle's network: {e}") from None
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.prepare_batch = parser.get_parsed_content("prepare_batch")
        self.inferer = parser.get_parsed_content("mirror_inferer")
        self.postprocessing = Compose(parser.get_parsed_content("landmark_postprocessing"))

    def __call__(self, item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The postprocessed item (``pred_landmarks`` in original-image pixels, ``pred_confidence``,
        ``pred_review``, ``pred_mirrored``...) of one inference item (:func:`~scripts.datalist.inference_items`)."""
        return self.predict(self.load(item))

    def load(self, item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The item read and prepared for the network (the errors of a bad image are raised here)."""
        return self.preprocessing(item)

    def predict(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The network and the postprocessing on one prepared item (:meth:`load`)."""
        batch = list_data_collate([data])
        inputs, _, args, kwargs = self.prepare_batch(batch, self.device, False)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            pred = self.inferer(inputs, self.network, *args, **kwargs)
        out = decollate_batch(batch)[0]
        out["image"], out["pred"] = decollate_batch(inputs)[0], pred[0]
        return self.postprocessing(out)
