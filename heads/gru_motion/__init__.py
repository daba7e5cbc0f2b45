"""gru-motion: a GRU motion encoder trained on the ``poses`` cache; exports a frozen MotionEncoder.

The head's interface (``heads.registry``): Config, PRESETS, READS, load_config, train_head,
read_checkpoint, predict_split.
"""
from .configuration import PRESETS, READS, Config, GruMotionConfig, load_config
from .model import GruMotionModel, MotionEncoder
from .predict import predict_split, read_checkpoint
from .train import train_gru_motion

train_head = train_gru_motion

__all__ = ["PRESETS", "READS", "Config", "GruMotionConfig", "GruMotionModel", "MotionEncoder", "load_config", "predict_split",
           "read_checkpoint", "train_gru_motion", "train_head"]
