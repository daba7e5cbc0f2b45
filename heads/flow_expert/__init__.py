"""flow-expert: a connector MLP + pi0-style action expert trained by flow matching on cached
per-frame context tokens and a LeRobot ``robot_meta`` cache.

The head's interface (``heads.registry``): Config, PRESETS, READS, reads (its caches, context datasets included), load_config, train_head,
read_checkpoint, predict_split; plus ``FlowExpertPolicy`` (export: ``sample_actions``).
"""
from .configuration import PRESETS, READS, Config, FlowExpertConfig, load_config, reads
from .export import FlowExpertPolicy, export_checkpoint, read_checkpoint
from .model import FlowExpert, FrozenPerception, PerceptionPolicy, make_attn_mask, posemb_sincos
from .predict import predict_split
from .train import FlowExpertTask, train_flow_expert

train_head = train_flow_expert

__all__ = ["PRESETS", "READS", "Config", "FlowExpert", "FlowExpertConfig", "FlowExpertPolicy", "FlowExpertTask", "FrozenPerception",
           "PerceptionPolicy", "export_checkpoint", "load_config", "make_attn_mask", "posemb_sincos", "predict_split", "read_checkpoint", "reads",
           "train_flow_expert", "train_head"]
