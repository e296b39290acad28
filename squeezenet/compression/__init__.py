"""Deep Compression (Han et al., ICLR 2016) for any PyTorch model.

One verb and its file (``api``)::

    compress_(model, CompressionConfig(...)) -> report      prune, share, (distil), in place
    compress_with_retraining(weights, CompressionConfig(...), RetrainConfig(data), out)   with labels

The file is written and read by ``squeezenet.weights`` (``save_compressed``, ``load_compressed``,
``encode``/``decode`` for bytes, ``size_report``), the home of all file I/O.

Below it, pure tensor functions and in-place stages: ``pruning`` (masks), ``quantization``
(k-means weight sharing, centroid gradients), ``rdquant`` (rate-distortion optimised levels for
a size budget), ``sensitivity`` (bit allocation), ``finetune`` (training hooks, distillation).
"""
from .api import Calibration, calibration_from_folder, compress_, compress_weights, load_calibration
from .config import CompressionConfig, RetrainConfig, parse_layer_spec
from .finetune import after_step_, before_step_
from .pruning import PruneConfig, apply_masks_, default_density, magnitude_mask, prune_, threshold_mask
from .quantization import kmeans_1d, share_weights_, snap_shared_weights_, sum_cluster_gradients_
from .report import CompressionReport
from .retrain import compress_with_retraining

__all__ = ["Calibration", "calibration_from_folder", "compress_", "compress_weights", "compress_with_retraining",
           "load_calibration", "CompressionConfig", "CompressionReport",
           "RetrainConfig", "parse_layer_spec", "after_step_", "before_step_", "PruneConfig", "apply_masks_",
           "default_density", "magnitude_mask", "prune_", "threshold_mask", "kmeans_1d", "share_weights_",
           "snap_shared_weights_", "sum_cluster_gradients_"]
