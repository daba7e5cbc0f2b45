"""gru-motion head: a GRU motion encoder trained on the ``poses`` cache (``navcache train gru-motion``)."""
from .config import GruMotionConfig, load_config
from .model import GruMotionModel, MotionEncoder
from .train import train_gru_motion

__all__ = ["GruMotionConfig", "GruMotionModel", "MotionEncoder", "load_config", "train_gru_motion"]
