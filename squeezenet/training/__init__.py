"""Training on image folders: one process, or many through ``torchrun`` (DDP)."""
from .train import TrainConfig, TrainingError, evaluate, load_config, train, train_one_epoch

__all__ = ["TrainConfig", "TrainingError", "evaluate", "load_config", "train", "train_one_epoch"]
