"""MONAI Label training task: the bundle's ``training`` workflow on the server's labelled studies.

The labels the viewer saved into the datastore (Slicer markups JSON, or landmark JSON in the datalist's format)
become a datalist whose ``anatomies`` section is the served checkpoint's; ``monai.bundle.ConfigWorkflow`` runs
``training`` from the layered configs (:func:`lib.bundle.bundle_config_files` with ``train=True``), starting from
the served weights; the best checkpoint then replaces the served one (renamed over it), so the next inference
request loads it. MONAI Label runs this task in a subprocess of the server.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from .bundle import LandmarkModel, bundle_config_files, import_bundle_scripts
from .geometry import read_geometry
from .markups import MarkupsError, markups_to_pixels, read_markups_points

__all__ = ["LabelError", "LandmarkTrainTask", "read_label", "datastore_items", "split_items", "publish_checkpoint"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _working_dir(path: str) -> Iterator[None]:
    """Run the block in ``path``, then return to the previous working directory."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _as_bool(value: Any) -> bool:
    """A request flag: JSON booleans, or strings such as ``"false"`` / ``"0"`` from a form."""
    return value.strip().lower() not in ("false", "0", "no", "off", "") if isinstance(value, str) else bool(value)


class LabelError(ValueError):
    """A saved label cannot be turned into a datalist item; the message names the label and the problem."""


def _anatomy_of_markups(data: Any, anatomies: Any, hint: str | None, source: str) -> str:
    """The anatomy a markups label annotates: the saved hint, the node's name, or the one owning all point labels."""
    node_name, points = read_markups_points(data, source)
    for candidate in (hint, node_name):
        if candidate and candidate in anatomies.names:
            return candidate
    owners = [a.name for a in anatomies if set(points) <= set(a.landmarks)]
    if len(owners) == 1:
        return owners[0]
    raise LabelError(
        f"{source}: cannot tell the anatomy (point labels {sorted(points)[:4]}... match {owners or 'none'} of "
        f"{anatomies.names}); name the markups node after the anatomy or save the label with params {{'anatomy': ...}}."
    )


def read_label(path: str, image: str, anatomies: Any, hint: str | None = None) -> dict[str, Any]:
    """One datalist item (``image``, ``anatomy``, ``landmarks`` in original-image pixels) from a saved label file.

    Accepted: a Slicer markups JSON (positions in mm, LPS or RAS, mapped to pixels through the image's
    geometry; points matched to landmarks by their labels), or landmark JSON in the datalist's format
    (``{"anatomy": ..., "landmarks": [[x, y] | null, ...]}``) or as the app's / bundle's inference results
    (``"landmarks": [{"name", "x", "y"}, ...]``).

    Args:
        path: the label file.
        image: the image it annotates.
        anatomies: the served checkpoint's anatomies.
        hint: the anatomy the label was saved with (label info ``anatomy``), if any.

    Raises:
        LabelError: not JSON, not a known format, unknown anatomy or landmark names.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LabelError(f"label {path}: not a readable JSON file ({e}).") from None
    try:
        if isinstance(data, dict) and "markups" in data:
            anatomy = _anatomy_of_markups(data, anatomies, hint, f"label {path}")
            landmarks = markups_to_pixels(data, read_geometry(image), anatomies[anatomy].landmarks, f"label {path}")
        elif isinstance(data, dict) and isinstance(data.get("landmarks"), list):
            anatomy = str(data.get("anatomy") or hint or "")
            if anatomy not in anatomies.names:
                raise LabelError(f"label {path}: anatomy {anatomy!r} is not one of {anatomies.names}.")
            names = anatomies[anatomy].landmarks
            raw = data["landmarks"]
            if raw and all(isinstance(p, Mapping) for p in raw):
                by_name = {str(p.get("name")): p for p in raw}
                unknown = sorted(set(by_name) - set(names))
                if unknown:
                    raise LabelError(f"label {path}: landmark name(s) {unknown} are not {anatomy} landmarks.")
                landmarks = [[float(by_name[n]["x"]), float(by_name[n]["y"])] if n in by_name else None for n in names]
            else:
                landmarks = raw
        else:
            raise LabelError(f"label {path}: neither a Slicer markups file nor landmark JSON ('landmarks').")
    except (MarkupsError, FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise LabelError(str(e) if isinstance(e, LabelError) else f"label {path}: {e}") from None
    return {"image": image, "anatomy": anatomy, "landmarks": landmarks}


def datastore_items(datastore: Datastore, anatomies: Any, tag: str = DefaultLabelTag.FINAL.value) -> tuple[list[dict], list[str]]:
    """Datalist items of every image of ``datastore`` with a label of ``tag``, and why others were skipped."""
    items, skipped = [], []
    for image_id in sorted(datastore.get_labeled_images(label_tag=tag)):
        image = datastore.get_image_uri(image_id)
        label = datastore.get_label_uri(image_id, tag)
        if not label:
            skipped.append(f"{image_id}: no label file for tag {tag!r}")
            continue
        info = datastore.get_label_info(image_id, tag) or {}
        hint = info.get("anatomy") or (info.get("params") or {}).get("anatomy")
        try:
            items.append(read_label(label, image, anatomies, hint))
        except LabelError as e:
            logger.warning(f"skipping image {image_id}: {e}")
            skipped.append(f"{image_id}: {e}")
    return items, skipped


def split_items(items: list[dict], val_split: float) -> tuple[list[dict], list[dict]]:
    """Training and validation items: every ``1 / val_split``-th item (in image order) validates.

    With ``val_split > 0`` at least one item validates, and with a single item it both trains and validates
    (the bundle keeps the checkpoint with the best validation error); ``val_split <= 0``: no validation.
    """
    if val_split <= 0 or not items:
        return list(items), []
    if len(items) == 1:
        return list(items), list(items)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_split)))
    picks = set(np.linspace(0, len(items) - 1, n_val).round().astype(int).tolist())
    return [d for i, d in enumerate(items) if i not in picks], [d for i, d in enumerate(items) if i in picks]


def publish_checkpoint(output_dir: str, served: str) -> str:
    """Rename the run's checkpoint over the served one (atomic), keeping the old one in ``output_dir``.

    The run's ``models/model.pt`` (best validation error) if it wrote one, else its newest epoch checkpoint
    (weights and anatomies only).

    Returns:
        the checkpoint file of the run that was published.

    Raises:
        FileNotFoundError: the run wrote no checkpoint.
    """
    best = os.path.join(output_dir, "models", "model.pt")
    if not os.path.isfile(best):
        epochs = glob.glob(os.path.join(output_dir, "models", "checkpoint_epoch=*.pt"))
        if not epochs:
            raise FileNotFoundError(f"training run {output_dir} wrote no checkpoint.")
        latest = max(epochs, key=lambda p: int(re.search(r"epoch=(\d+)", p).group(1)))
        state = torch.load(latest, map_location="cpu", weights_only=True)
        torch.save({"model": state["model"], "anatomies": state["anatomies"]}, best)
    folder = os.path.dirname(os.path.abspath(served))
    os.makedirs(folder, exist_ok=True)
    if os.path.isfile(served):
        shutil.copy2(served, os.path.join(output_dir, "previous_checkpoint.pt"))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".publish_", suffix=".pt")
    os.close(fd)
    try:
        shutil.copyfile(best, tmp)
        os.replace(tmp, served)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return best


class LandmarkTrainTask(TrainTask):
    """Fine-tune (or train) the served model on the datastore's labels with the bundle's ``training`` workflow.

    Args:
        model: the served checkpoint; training publishes its result there.
        output_root: where each run's folder (``<name>_<time>``) goes unless the request names one (``output``).
        description: shown by MONAI Label.

    Request options (MONAI Label's train ``params``) and the bundle overrides they become: ``max_epochs`` ->
    ``max_epochs``; ``train_batch_size`` -> ``batch_size``; ``val_interval`` -> ``val_interval``;
    ``dataset`` (a folder with a ``datalist.json``; empty: the datastore's labels) -> ``dataset_dir``;
    ``output`` -> ``output_dir``; the served checkpoint -> ``ckpt_path`` and, with ``pretrained``, the starting
    weights. Also ``val_split`` (share of the labelled images that validates), ``label_tag`` (default ``final``),
    ``name`` (the run folder's prefix) and ``publish`` (replace the served checkpoint; default true).
    """

    def __init__(self, model: LandmarkModel, output_root: str, description: str = "") -> None:
        super().__init__(description or "GU2Net: the bundle's training workflow on the datastore's landmark labels")
        self.model, self.output_root = model, output_root

    def config(self) -> dict[str, Any]:
        return {
            "name": "train",
            "max_epochs": 50,
            "train_batch_size": 4,
            "val_split": 0.2,
            "val_interval": 1,
            "pretrained": True,
            "publish": True,
            "label_tag": DefaultLabelTag.FINAL.value,
            "dataset": "",
            "output": "",
        }

    def stats(self) -> dict[str, Any]:
        path = os.path.join(self.output_root, "last_train.json")
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def _datalist(self, request: Mapping[str, Any], datastore: Datastore, run_dir: str, anatomies: Any) -> tuple[str, dict]:
        dataset = str(request.get("dataset") or "")
        if dataset and os.path.isfile(os.path.join(dataset, "datalist.json")):
            return os.path.abspath(dataset), {"source": os.path.join(dataset, "datalist.json")}
        if dataset:
            raise LabelError(f"dataset {dataset!r}: no datalist.json there (leave it empty to train on the datastore's labels).")
        items, skipped = datastore_items(datastore, anatomies, str(request.get("label_tag") or DefaultLabelTag.FINAL.value))
        if not items:
            raise LabelError(f"no usable landmark labels in the datastore (tag {request.get('label_tag') or 'final'}); skipped: {skipped}")
        training, validation = split_items(items, float(request.get("val_split", 0.2)))
        datalist = {"anatomies": anatomies.to_dict(), "training": training, "validation": validation, "test": []}
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "datalist.json"), "w") as f:
            json.dump(datalist, f, indent=2)
        return run_dir, {"source": "datastore", "training": len(training), "validation": len(validation), "skipped": skipped}

    def _run(self, request: Mapping[str, Any], overrides: dict[str, Any], anatomies: Any, dataset_dir: str, scripts: Any) -> bool:
        """Run the bundle's ``training`` workflow; returns whether to publish its checkpoint."""
        from monai.bundle import ConfigWorkflow

        workflow = ConfigWorkflow(
            config_file=bundle_config_files(self.model.bundle_dir, train=True),
            workflow_type=None,
            run_id="training",
            **overrides,
        )
        workflow.initialize()
        pretrained = _as_bool(request.get("pretrained", True)) and os.path.isfile(self.model.checkpoint)
        publish = _as_bool(request.get("publish", True))
        if pretrained or publish:  # the served tasks are the served anatomies: training must keep them
            try:
                workflow.parser.get_parsed_content("anatomies").load_state_dict(anatomies.state_dict())
            except ValueError as e:
                raise LabelError(f"dataset {dataset_dir}: its anatomies differ from the served checkpoint's ({e})") from None
        if pretrained:
            state = scripts.read_checkpoint(self.model.checkpoint)
            workflow.parser.get_parsed_content("network").load_state_dict(state["model"])
            logger.info(f"starting from the weights of {self.model.checkpoint}")
        workflow.run()
        workflow.finalize()
        return publish

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Run the bundle's ``training`` on the labels, then publish the checkpoint; returns the run's summary."""
        scripts = import_bundle_scripts(self.model.bundle_dir)
        anatomies = self.model.anatomies()
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(request.get("name") or "train"))
        output_dir = os.path.abspath(str(request.get("output") or os.path.join(self.output_root, f"{name}_{time.strftime('%Y%m%d_%H%M%S')}")))
        dataset_dir, data_info = self._datalist(request, datastore, os.path.join(output_dir, "data"), anatomies)
        max_epochs = int(request.get("max_epochs", 50))
        has_validation = data_info.get("validation", 1) > 0
        overrides = {
            "dataset_dir": dataset_dir,
            "output_dir": output_dir,
            "ckpt_path": self.model.checkpoint,
            "max_epochs": max_epochs,
            "batch_size": int(request.get("train_batch_size", 4)),
            "val_interval": int(request.get("val_interval", 1)) if has_validation else max_epochs + 1,
            "resume": False,
            # the served anatomies stay in the network; this run trains those the labels hold
            "trained_anatomies": "$scripts.AnatomySet([a for a in @anatomies if a.name in {d['anatomy'] for d in @train#datalist}])",
            "require_validation": has_validation,
            **self.model.overrides,
        }
        logger.info(f"training with {bundle_config_files(self.model.bundle_dir, train=True)} and {overrides}")
        started = time.time()
        with _working_dir(self.model.bundle_dir):  # the configs refer to each other from the bundle folder
            publish = self._run(request, overrides, anatomies, dataset_dir, scripts)
        summary: dict[str, Any] = {
            "output_dir": output_dir,
            "dataset_dir": dataset_dir,
            "data": data_info,
            "overrides": {k: v for k, v in overrides.items() if isinstance(v, (str, int, float, bool))},
            "seconds": round(time.time() - started, 1),
        }
        if publish:
            summary["published_from"] = publish_checkpoint(output_dir, self.model.checkpoint)
            summary["checkpoint"] = self.model.checkpoint
            summary["checkpoint_mtime"] = os.stat(self.model.checkpoint).st_mtime
        os.makedirs(self.output_root, exist_ok=True)
        with open(os.path.join(self.output_root, "last_train.json"), "w") as f:
            json.dump(summary, f, indent=2)
        logger.info(f"training finished: {summary}")
        return summary
