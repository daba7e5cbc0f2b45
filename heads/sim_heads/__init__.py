"""SIM v0 heads: risk / reason / action from rover frame_features + telemetry through a frozen LLM."""
from .config import SimHeadsConfig, load_config
from .model import SimV0Model, load_frozen_llm, make_random_gpt2
from .predict import load_for_inference, predict_split
from .train import train_sim_heads

__all__ = ["SimHeadsConfig", "SimV0Model", "load_config", "load_for_inference", "load_frozen_llm", "make_random_gpt2", "predict_split",
           "train_sim_heads"]
