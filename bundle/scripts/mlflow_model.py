"""The trained network in MLflow's own format: a ``pyfunc`` model that returns landmarks.

:class:`GU2NetLandmarkModel` runs the bundle's inference path, ``configs/inference.yaml`` parsed with MONAI's
``ConfigParser`` (:class:`~scripts.predictor.ImagePredictor`: its image reading and resizing, network, inference
engine, mirroring, decoding, refinement stage and review flag; nothing copied), on the checkpoint (and refiner)
it was logged with. It takes rows of ``image`` (a path the server can read, any ITK format, or the pixels as an
``H x W`` array, row by row as ``numpy`` and PIL give them) and ``anatomy`` (one of the checkpoint's), and returns
per row what ``run inference`` writes to ``<stem>.json``: the anatomy, the image size and spacing, ``mirrored``,
``refined`` and, per landmark, its name, ``x``, ``y`` (original image pixels), confidence and ``review``.

:class:`MLflowModelLogger` (a training handler) logs the best checkpoint as such a model in the training run
when training completes, and again with the refiner when the refining workflow completes (its run), with a
signature and an input example, and registers it when ``registered_model_name`` is set; then
``mlflow models serve -m models:/NAME/1`` answers landmark requests over HTTP. A checkpoint can also be logged later::

    python -m scripts.mlflow_model --ckpt_path ../runs/demo/models/model.pt --tracking_uri http://host:5000 \\
        --run_id RUN_ID --registered_model_name gu2net
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
from ignite.engine import Engine, Events
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Object, Property, Schema

__all__ = ["GU2NetLandmarkModel", "LandmarkPredictor", "MLflowModelLogger", "log_landmark_model", "MODEL_SIGNATURE"]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "image"), ColSpec(DataType.string, "anatomy")]),
    outputs=Schema(
        [
            ColSpec(DataType.string, "image"),
            ColSpec(DataType.string, "anatomy"),
            ColSpec(Object([Property("width", DataType.long), Property("height", DataType.long)]), "image_size"),
            ColSpec(
                Array(
                    Object(
                        [
                            Property("name", DataType.string),
                            Property("x", DataType.double),
                            Property("y", DataType.double),
                            Property("confidence", DataType.double),
                            Property("review", DataType.boolean, required=False),
                        ]
                    )
                ),
                "landmarks",
            ),
            ColSpec(DataType.boolean, "mirrored", required=False),
            ColSpec(DataType.boolean, "refined"),
        ]
    ),
)


class LandmarkPredictor:
    """The inference config's objects for one checkpoint (:class:`~scripts.predictor.ImagePredictor`), applied to
    images given as paths or arrays.

    Args:
        config_file: ``inference.yaml`` (the bundle's, or the copy logged with a model).
        ckpt_path: a checkpoint of the training workflow (its anatomies define the accepted ``anatomy`` names).
        overrides: more config values, e.g. ``{"decoder": "argmax", "refiner_path": None}``.

    :meth:`predict` runs what the inference workflow runs per image (mirroring, decoding, the refinement stage
    where ``refiner_path`` names a refiner, the review flag) and returns what it writes to ``<stem>.json``.
    """

    def __init__(self, config_file: str, ckpt_path: str, overrides: Mapping[str, Any] | None = None) -> None:
        from monai.bundle import ConfigParser

        from .predictor import ImagePredictor

        self._tmp = tempfile.TemporaryDirectory(prefix="gu2net_pyfunc_")
        parser = ConfigParser()
        parser.read_config(config_file)
        # the checkpoint's anatomies (no datalist, so no demo is generated); nothing is written
        parser.update({"ckpt_path": os.path.abspath(ckpt_path), "datalist": None, "output_dir": self._tmp.name})
        parser.update(dict(overrides or {}))
        self.predictor = ImagePredictor(parser)
        self.anatomies = self.predictor.anatomies

    def predict(self, image: Any, anatomy: str) -> dict[str, Any]:
        """Landmarks of one image (a path, or an ``H x W`` array / nested list) of ``anatomy``: the inference JSON."""
        from .datalist import inference_items
        from .outputs import landmark_result

        with tempfile.TemporaryDirectory(dir=self._tmp.name) as folder:
            path, source = self._image_file(image, folder)
            (item,) = inference_items(self.anatomies, [path], str(anatomy))
            result = landmark_result(self.predictor(item), self.anatomies)
        result["image"] = source
        return result

    @staticmethod
    def _image_file(image: Any, folder: str) -> tuple[str, str]:
        """A path the inference path reads: ``image`` itself, or the array written losslessly to an MHA file
        (read back through the same ITK reader as a PNG of the same pixels, so the same landmarks)."""
        if isinstance(image, (str, os.PathLike)):
            return os.fspath(image), os.fspath(image)
        import itk

        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
            itk_image = itk.image_from_array(np.ascontiguousarray(pixels[..., :3]), is_vector=True)
        elif pixels.ndim == 2:
            itk_image = itk.image_from_array(np.ascontiguousarray(pixels))
        else:
            raise ValueError(f"image: expected a path or an H x W (or H x W x 3) array, got an array of shape {pixels.shape}.")
        path = os.path.join(folder, "image.mha")
        itk.imwrite(itk_image, path)
        return path, f"array {pixels.shape[1]}x{pixels.shape[0]}"


def _rows(model_input: Any) -> list[Mapping[str, Any]]:
    """The request's rows: a DataFrame (what MLflow's server builds), a list of mappings or one mapping."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, Mapping):
        return [model_input]
    return list(model_input)


class GU2NetLandmarkModel(mlflow.pyfunc.PythonModel):
    """MLflow ``pyfunc``: rows of ``image`` (path or ``H x W`` array) and ``anatomy`` -> landmarks (see the module).

    The artifacts are the checkpoint (``checkpoint``), the inference config (``inference_config``) and, where
    one was trained, the refinement stage (``refiner``); the bundle's ``scripts`` package travels as code.
    ``model_config`` holds config overrides (e.g. the decoder the model was trained to be read with).
    """

    def load_context(self, context: Any) -> None:
        # the refiner logged with the model, or none (not whatever may lie beside the checkpoint's copy)
        overrides = {**(context.model_config or {}), "refiner_path": context.artifacts.get("refiner")}
        self.predictor = LandmarkPredictor(context.artifacts["inference_config"], context.artifacts["checkpoint"], overrides)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        results = []
        for k, row in enumerate(_rows(model_input)):
            if row.get("image") is None or not row.get("anatomy"):
                raise ValueError(f"row {k}: needs 'image' (a path or an H x W array) and 'anatomy'.")
            results.append(self.predictor.predict(row["image"], row["anatomy"]))
        return results


def _pip_requirements() -> list[str]:
    """The bundle's own pins (configs/metadata.json): what serving the model needs beside MLflow."""
    meta = json.load(open(os.path.join(BUNDLE_ROOT, "configs", "metadata.json")))
    pins = {"torch": meta["pytorch_version"], "monai": meta["monai_version"], "numpy": meta["numpy_version"]}
    pins.update(meta.get("required_packages_version", {}))
    return [f"{name}=={version}" for name, version in pins.items()]


def input_example(anatomy: str, size: int = 32) -> Any:
    """A one-row request: a small ramp image as an ``H x W`` array, and the anatomy."""
    import pandas as pd

    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.float64).tolist()
    return pd.DataFrame({"image": [ramp], "anatomy": [anatomy]})


def refiner_file(ckpt_path: str, refiner_path: str | None = None) -> str | None:
    """The refiner a model of ``ckpt_path`` is logged with: ``refiner_path``, by default ``refiner/refiner.pt``
    beside the checkpoint (where ``run inference`` finds it), if that file exists; else None."""
    path = refiner_path or os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "refiner", "refiner.pt")
    return os.path.abspath(path) if os.path.isfile(path) else None


def log_landmark_model(
    ckpt_path: str,
    name: str = "model",
    registered_model_name: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    refiner_path: str | None = None,
) -> Any:
    """Log ``ckpt_path`` as a :class:`GU2NetLandmarkModel` in the active MLflow run (and register it under
    ``registered_model_name`` if given); returns MLflow's ``ModelInfo``. ``refiner_path``: the refinement stage
    logged with it where that file exists (default: ``refiner/refiner.pt`` beside the checkpoint, where
    ``run inference`` finds it)."""
    from .anatomies import AnatomySet

    anatomies = AnatomySet.from_checkpoint(ckpt_path)
    artifacts = {
        "checkpoint": os.path.abspath(ckpt_path),
        "inference_config": config_file or os.path.join(BUNDLE_ROOT, "configs", "inference.yaml"),
    }
    if refiner := refiner_file(ckpt_path, refiner_path):
        artifacts["refiner"] = refiner
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=os.path.join(BUNDLE_ROOT, "scripts", "mlflow_pyfunc.py"),  # models from code: no pickle
        artifacts=artifacts,
        code_paths=[os.path.join(BUNDLE_ROOT, "scripts")],
        model_config=dict(model_config or {}),
        signature=MODEL_SIGNATURE,
        input_example=input_example(anatomies.names[0]),
        pip_requirements=_pip_requirements(),
        registered_model_name=registered_model_name or None,
    )


def find_run(tracking_uri: str, experiment_name: str, run_name: str) -> str | None:
    """The id of the newest run named ``run_name`` in ``experiment_name`` (how MONAI's MLflow handlers find it)."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


class MLflowModelLogger:
    """Training handler: on ``COMPLETED``, log the best checkpoint as an MLflow model in the training run.

    Args:
        settings: the run's shared MLflow settings (``tracking_uri``, ``experiment_name``, ``run_name``).
        ckpt_path: the best checkpoint (``models/model.pt``).
        registered_model_name: also register the model under this name (a new version per run).
        model_config: inference config overrides saved with the model (e.g. the decoder).
        enabled: False to skip it.
        refiner_path: the refinement stage logged with the model, where that file exists (default: the one beside
            the checkpoint, as inference finds it; the refining workflow logs the model again with its new refiner).

    It runs after the MLflow handler has closed the run, so it finds the run by name (as MONAI's handlers do)
    and reopens it for the model. A failure to log (e.g. the tracking server is down) is an error in the log,
    not a failed training: the checkpoint is on disk and can be logged later with ``python -m scripts.mlflow_model``.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        ckpt_path: str,
        registered_model_name: str | None = None,
        model_config: Mapping[str, Any] | None = None,
        enabled: bool = True,
        refiner_path: str | None = None,
    ) -> None:
        self.settings, self.ckpt_path, self.refiner_path = dict(settings), ckpt_path, refiner_path
        self.registered_model_name, self.model_config, self.enabled = registered_model_name, model_config, enabled
        self.model_info: Any = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if not os.path.isfile(self.ckpt_path):
            engine.logger.warning(f"MLflow model: no best checkpoint {self.ckpt_path} (no validation ran); nothing logged.")
            return
        uri = os.environ.get("MLFLOW_TRACKING_URI") or str(self.settings["tracking_uri"])  # as MONAI's handler
        try:
            run_id = find_run(uri, self.settings["experiment_name"], self.settings["run_name"])
            if run_id is None:
                raise RuntimeError(f"no run {self.settings['run_name']!r} in experiment {self.settings['experiment_name']!r}")
            mlflow.set_tracking_uri(uri)
            with mlflow.start_run(run_id=run_id):
                self.model_info = log_landmark_model(
                    self.ckpt_path,
                    registered_model_name=self.registered_model_name,
                    model_config=self.model_config,
                    refiner_path=self.refiner_path,
                )
        except Exception as e:  # the weights are safe on disk; say how to log them later
            engine.logger.error(
                f"MLflow model: {self.ckpt_path} was not logged to {uri} ({type(e).__name__}: {e}); log it later with "
                f"python -m scripts.mlflow_model --ckpt_path {self.ckpt_path} --tracking_uri {uri} --run_id RUN_ID"
            )
            return
        registered = f", registered as {self.registered_model_name}" if self.registered_model_name else ""
        refined = " with its refiner" if refiner_file(self.ckpt_path, self.refiner_path) else ""
        engine.logger.info(f"MLflow model: logged {self.ckpt_path}{refined} as {self.model_info.model_uri}{registered}.")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Log a GU2Net checkpoint as an MLflow pyfunc model.")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--tracking_uri", required=True)
    parser.add_argument("--run_id", help="log into this run (default: a new run in --experiment_name)")
    parser.add_argument("--experiment_name", default="gu2net")
    parser.add_argument("--registered_model_name")
    parser.add_argument("--decoder", help="the decoder the served model uses (default: inference.yaml's)")
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(args.tracking_uri)
    if not args.run_id:
        mlflow.set_experiment(args.experiment_name)
    with mlflow.start_run(run_id=args.run_id):
        info = log_landmark_model(
            args.ckpt_path,
            registered_model_name=args.registered_model_name,
            model_config={"decoder": args.decoder} if args.decoder else None,
        )
    print("logged", info.model_uri, f"(registered as {args.registered_model_name})" if args.registered_model_name else "")


if __name__ == "__main__":
    main()
