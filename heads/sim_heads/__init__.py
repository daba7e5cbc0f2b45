"""sim-heads: SIM v0 risk / reason / action from rover frame_features + telemetry through a frozen LLM.

The head's interface (``heads.registry``): Config, PRESETS, READS, load_config, train_head,
read_checkpoint, predict_split.
"""
from .configuration import PRESETS, READS, Config, SimHeadsConfig, load_config
from .export import export_checkpoint, load_export
from .model import SimV0Model, load_frozen_llm, make_random_gpt2
from .predict import load_for_inference, predict_split, read_checkpoint
from .train import train_sim_heads

train_head = train_sim_heads

__all__ = ["PRESETS", "READS", "Config", "SimHeadsConfig", "SimV0Model", "export_checkpoint", "load_config", "load_export",
           "load_for_inference", "load_frozen_llm", "make_random_gpt2", "predict_split", "read_checkpoint", "train_head", "train_sim_heads"]
