"""velocity-head: OpenVLA's 2-D velocity action from cached vision features + the goal point (VAMOS).

The head's interface (``heads.registry``): Config, PRESETS, READS, load_config, train_head,
read_checkpoint, predict_split.
"""
from .configuration import PRESETS, READS, Config, VelocityHeadConfig, load_config
from .export import load_export
from .model import VelocityHead
from .predict import load_for_inference, predict_split, read_checkpoint
from .train import train_velocity_head, unnormalise

train_head = train_velocity_head

__all__ = ["PRESETS", "READS", "Config", "VelocityHead", "VelocityHeadConfig", "load_config", "load_export", "load_for_inference",
           "predict_split", "read_checkpoint", "train_head", "train_velocity_head", "unnormalise"]
