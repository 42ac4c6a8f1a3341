"""Training: the loop, checkpoints, logging, gate pretraining and the paper's pipeline."""

from mops.training.config import TrainConfig
from mops.training.loop import Runtime, TrainingError, train_steps
from mops.training.pipeline import METHODS, Experiment, run_methods

__all__ = ["METHODS", "Experiment", "Runtime", "TrainConfig", "TrainingError", "run_methods", "train_steps"]
