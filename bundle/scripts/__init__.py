"""GU2Net universal landmark detection: the bundle's custom Python, re-exported for the configs."""

from .add_anatomy import grow_network, most_similar_anatomy, trainable_parameters
from .anatomies import Anatomy, AnatomySet
from .augmentation import RandCropResized, RandFramingAffined, RandInvertIntensityd, choose_augmentation
from .baselines import mean_shape, mean_shape_baseline
from .checkpoint_saver import AtomicDiskSaver, SafeCheckpointSaver, read_best_score
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
from .durable import replace_durably, save_torch_atomic
from .errors import BundleError, error_summary, install_error_hook
from .distributed import (
    BroadcastBuffers,
    DistributedLandmarkErrorMetric,
    check_distributed_settings,
    finalize_distributed,
    init_distributed,
    local_device,
    rank,
    rank_zero_only,
    tracking_store_first,
    world_size,
)
from .ema import WeightEMA
from .gu2net import GU2Net
from .heatmaps import DecodeLandmarksd, LandmarkHeatmap, LandmarkHeatmapd, decode_heatmaps, grid_to_original
from .image_io import read_image_header
from .inferers import DeployInferer
from .inputs import InputError, check_training_data, finish_inference, inference_inputs, output_names
from .landmark_transforms import PointsInImaged, ResizeToSized, ToGray2D, ToGray2Dd
from .losses import HeatmapBCELoss
from .metrics import (
    LandmarkErrorMetric,
    format_metrics_table,
    radial_errors,
    summarize_anatomy,
    summarize_errors,
    write_metrics_json,
)
from .mirroring import MirrorInferer, SelectOrientationd
from .outputs import SaveLandmarksd, SaveOverlayd, landmark_result
from .overlays import confidence_colour, overlay_image
from .predictor import ImagePredictor
from .recognition import (
    AnatomyRecognizer,
    FitAnatomyRecognizer,
    RecognitionReportHandler,
    anatomy_recognition,
    evaluate_recognition,
    fit_recognizer,
    load_recognizer,
    train_recognizer,
)
from .reframing import ReframeInferer
from .reports import EvaluationReport
from .refinement import (
    AccumulateLandmarkShapes,
    LandmarkRefiner,
    PatchHeatmapLoss,
    RandLandmarkPatchesd,
    RefineLandmarksd,
    landmark_patches,
    shape_scale,
)
from .review import (
    CalibrateReviewThresholds,
    ChooseReviewThresholds,
    FlagReviewd,
    ReviewThresholds,
    calibrate_checkpoint,
)
from .run_lock import RunLockError, lock_output_dir
from .runtime import keep_freed_memory
from .sampling import AnatomyBatchSampler, SetSamplerEpoch, anatomy_dataloader
from .shifts import ImageShiftd
from .tracking import MLFlowReportHandler, TrackingError, check_tracking, mlflow_handler
