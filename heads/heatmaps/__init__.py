"""heatmaps: where keyframe B's content appears in keyframe A's first-person view (grid + out-of-view
ring), from cached VGGT tokens and DINOv3 patch tokens, trained on ``covisibility`` targets.

The head's interface (``heads.registry``): Config, PRESETS, READS, reads, load_config, train_head,
read_checkpoint, predict_split.
"""
from .configuration import PRESETS, READS, Config, HeatmapsConfig, load_config, reads
from .model import HeatmapModel, convex_upsample, make_random_qwen2
from .predict import load_for_inference, predict_split, read_checkpoint
from .train import train_heatmaps

train_head = train_heatmaps

__all__ = ["PRESETS", "READS", "Config", "HeatmapModel", "HeatmapsConfig", "convex_upsample", "load_config", "load_for_inference",
           "make_random_qwen2", "predict_split", "read_checkpoint", "reads", "train_head", "train_heatmaps"]
