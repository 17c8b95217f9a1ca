"""The model file MLflow loads ("models from code", no pickle): the pyfunc of :mod:`scripts.mlflow_model`.

``log_landmark_model`` logs this file as the model's code; MLflow runs it when it loads the model (with the
bundle's ``scripts`` package, logged beside it, on the path).
"""

import mlflow

from scripts.mlflow_model import GU2NetLandmarkModel

mlflow.models.set_model(GU2NetLandmarkModel())
