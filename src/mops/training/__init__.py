"""Training: the loop, checkpoints, logging, gate pretraining, the stage store and the paper's pipeline."""

from mops.training.config import TrainConfig
from mops.training.loop import Runtime, TrainingError, train_steps
from mops.training.pipeline import Pipeline, run_methods

__all__ = ["Pipeline", "Runtime", "TrainConfig", "TrainingError", "run_methods", "train_steps"]
