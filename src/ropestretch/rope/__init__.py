"""RoPE frequency math and export: scalings, DPRoPE's angle distributions, Hugging Face configs."""

from ropestretch.rope.config import RopeConfig, load_config_dict, load_rope_config, rope_config_from_dict
from ropestretch.rope.distribution import (
    DPRopeChoice,
    angle_distribution,
    disturbance,
    dprope_choice,
    method_disturbance,
    select,
)
from ropestretch.rope.scalings import SCALINGS, Scaled, base_inv_freq, register, scale

__all__ = [
    "RopeConfig", "load_config_dict", "load_rope_config", "rope_config_from_dict",
    "DPRopeChoice", "angle_distribution", "disturbance", "dprope_choice", "method_disturbance", "select",
    "SCALINGS", "Scaled", "base_inv_freq", "register", "scale",
]
