"""SIM v0 heads: risk / reason / action from rover frame_features + telemetry through a frozen LLM."""
from .config import SimHeadsConfig, load_config
from .model import SimV0Model, load_frozen_llm, make_random_gpt2
from .train import train_sim_heads

__all__ = ["SimHeadsConfig", "SimV0Model", "load_config", "load_frozen_llm", "make_random_gpt2", "train_sim_heads"]
