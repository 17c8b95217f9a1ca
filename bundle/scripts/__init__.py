"""GU2Net universal landmark detection: the bundle's custom Python, re-exported for the configs."""

from .anatomies import Anatomy, AnatomySet
from .augmentation import RandCropResized, RandFramingAffined, RandInvertIntensityd, choose_augmentation
from .baselines import mean_shape, mean_shape_baseline
from .checkpoints import CheckedCheckpointLoader, CheckpointError, ResumeFromLatest, read_checkpoint
from .datalist import (
    DatalistError,
    inference_items,
    load_anatomies,
    load_datalist,
    read_datalist_json,
    workflow_anatomies,
)
from .datasets import PreparedAnatomy, PrepareError, prepare_generic, prepare_hand, prepare_isbi2015, prepare_shenzhen
from .datasets.demo import ensure_demo, generate_demo
from .deploy import DeployGU2Net, export_onnx, fold_batch_norm
from .ema import WeightEMA
from .gu2net import GU2Net
from .heatmaps import DecodeLandmarksd, LandmarkHeatmap, LandmarkHeatmapd, decode_heatmaps, grid_to_original
from .image_io import read_image_header
from .inferers import DeployInferer
from .landmark_transforms import PointsInImaged, ResizeToSized, ToGray2D, ToGray2Dd
from .losses import HeatmapBCELoss
from .metrics import LandmarkErrorMetric, radial_errors, summarize_anatomy, summarize_errors
from .mirroring import MirrorInferer, SelectOrientationd
from .outputs import SaveLandmarksd, SaveOverlayd, overlay_image
from .review import ChooseReviewThresholds, FlagReviewd, ReviewThresholds
from .reports import EvaluationReport, MLFlowReportHandler, format_metrics_table, write_metrics_json
from .runtime import keep_freed_memory
from .sampling import AnatomyBatchSampler, anatomy_dataloader
from .shifts import ImageShiftd
from .tracking import mlflow_handler
