"""Training on image folders: one process, or many through ``torchrun`` (DDP).

``config`` (recipes) -> ``distributed`` (process group) -> ``data`` (batches) -> ``loop``
(``train_one_epoch``, ``evaluate``) -> ``checkpoint`` (save, resume) -> ``train`` (orchestration).
"""
from .config import TrainConfig, TrainingError, load_config
from .data import build_data
from .distributed import Dist, setup_distributed
from .loop import evaluate, train_one_epoch
from .train import train

__all__ = ["TrainConfig", "TrainingError", "load_config", "Dist", "setup_distributed", "build_data", "evaluate",
           "train_one_epoch", "train"]
