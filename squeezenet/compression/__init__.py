"""Deep Compression: pruning, trained quantization, Huffman coding and the file formats."""
from .format import compress_model, decode, load_compressed, read_compressed, save_compressed, size_report
from .pipeline import CompressionConfig, compress_loaded, prune_and_share_
from .pruning import PruneConfig, apply_masks_, default_density, magnitude_mask, prune_, threshold_mask
from .quantization import kmeans_1d, share_weights_, snap_shared_weights_, sum_cluster_gradients_

__all__ = ["compress_model", "decode", "load_compressed", "read_compressed", "save_compressed", "size_report",
           "CompressionConfig", "compress_loaded", "prune_and_share_", "PruneConfig", "apply_masks_",
           "default_density", "magnitude_mask", "prune_", "threshold_mask", "kmeans_1d", "share_weights_",
           "snap_shared_weights_", "sum_cluster_gradients_"]
