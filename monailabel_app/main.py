"""MONAI Label app serving the GU2Net landmark bundle (``../bundle``) from its configs.

Start it from the repository root::

    python -m monailabel.main start_server --app monailabel_app --studies /path/to/xrays \
        --conf checkpoint runs/demo/models/model.pt

``--conf`` keys (all optional): ``checkpoint`` (the served ``model.pt``; default: the bundle's ``ckpt_path``),
``bundle`` (the bundle folder), ``review_threshold`` (0.3; used when the checkpoint saved none),
``min_image_size`` (32 px), ``label_radius`` (px of the label image's disks; 0: 1 % of the image),
``output_dir`` (training runs; default ``monailabel_app/model/train_runs``), ``inference_engine`` (a bundle
override: ``onnx``, ``torchscript`` or ``pytorch``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from lib.bundle import BUNDLE_DIR, LandmarkModel, RequestError, bundle_parser, import_bundle_scripts
from lib.infer import LandmarkInferTask
from lib.train import LandmarkTrainTask

logger = logging.getLogger(__name__)

GENERIC_TASK = "landmarks"
TRAIN_TASK = "gu2net"
# X-ray formats ITK reads, beside MONAI Label's default image patterns
EXTRA_IMAGE_PATTERNS = ["*.bmp", "*.jpeg", "*.mha", "*.dcm"]


class GU2NetLandmarksApp(MONAILabelApp):
    """Landmark detection with the GU2Net bundle: one task per anatomy, ``landmarks``, and training.

    Args:
        app_dir: this folder.
        studies: the datastore (a folder of images, or a DICOMweb URL).
        conf: ``--conf`` key/value pairs (see the module's docstring).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle_dir = os.path.abspath(conf.get("bundle", BUNDLE_DIR))
        overrides = {k: conf[k] for k in ("inference_engine",) if conf.get(k)}
        checkpoint = conf.get("checkpoint") or bundle_parser(self.bundle_dir, overrides).get_parsed_content("ckpt_path")
        self.model = LandmarkModel(checkpoint, self.bundle_dir, overrides)
        self.review_threshold = float(conf.get("review_threshold", 0.3))
        self.min_image_size = int(conf.get("min_image_size", 32))
        self.label_radius = float(conf.get("label_radius", 0))
        self.output_root = os.path.abspath(conf.get("output_dir") or os.path.join(app_dir, "model", "train_runs"))
        logger.info(f"serving {self.model.checkpoint} with the bundle in {self.bundle_dir}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="GU2Net anatomical landmarks",
            description="Universal anatomical landmark detection on 2D X-rays (GU2Net MONAI bundle)",
            version=self._bundle_version(),
        )

    def _bundle_version(self) -> str:
        import json

        try:
            with open(os.path.join(self.bundle_dir, "configs", "metadata.json")) as f:
                return str(json.load(f).get("version", ""))
        except (OSError, ValueError):
            return ""

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        patterns = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT) + EXTRA_IMAGE_PATTERNS
        return LocalDatastore(
            self.studies,
            extensions=patterns,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        anatomies = self.model.anatomies()
        common = {
            "model": self.model,
            "anatomies": anatomies.names,
            "review_threshold": self.review_threshold,
            "min_image_size": self.min_image_size,
            "label_radius": self.label_radius,
        }
        infers: dict[str, InferTask] = {
            a.name: LandmarkInferTask(anatomy=a.name, landmarks=a.landmarks, **common)
            for a in anatomies
            if a.name != GENERIC_TASK
        }
        infers[GENERIC_TASK] = LandmarkInferTask(anatomy=None, **common)
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        return {TRAIN_TASK: LandmarkTrainTask(self.model, self.output_root)}

    def bundle_path(self, model: str) -> str | None:
        """The bundle folder: MONAI Label puts it on the training subprocess's ``PYTHONPATH``."""
        return self.bundle_dir if model in self._trainers else None

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's inference, with HTTP errors that say what is wrong (the base class answers a bare 500).

        Raises:
            HTTPException: 404 for an unknown task or image id; 400 for a request the task cannot serve (missing
                or unknown anatomy, an image that is unreadable, 3D or too small); 500 for a checkpoint problem.
        """
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown task {model!r}; this server's inference tasks: {sorted(self._infers)}.")
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(
                status_code=404,
                detail=f"unknown image {image!r}: no such image id in the datastore {self.studies} (nor a file path).",
            )
        scripts = import_bundle_scripts(self.bundle_dir)
        try:
            return super().infer(request, datastore)
        except RequestError as e:
            raise HTTPException(status_code=400, detail=f"task {model!r}: {e}") from None
        except scripts.CheckpointError as e:
            raise HTTPException(status_code=500, detail=f"task {model!r}: {e}") from None
        except MONAILabelException as e:
            raise HTTPException(status_code=400, detail=f"task {model!r}: {e.msg}") from None
