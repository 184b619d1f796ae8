"""RoPE frequency math and export: reading a model's RoPE, scalings, DPRoPE's angle distributions,
Hugging Face configs."""

from ropestretch.rope.config import RopeConfig, load_config_dict, load_rope_config, rope_config_from_dict
from ropestretch.rope.distribution import (
    DPRopeChoice,
    angle_distribution,
    disturbance,
    dprope_choice,
    method_disturbance,
    select,
)
from ropestretch.rope.families import FAMILIES, Family, family
from ropestretch.rope.frequencies import ROPE_TYPES, base_inv_freq, rope_frequencies
from ropestretch.rope.scalings import SCALINGS, Composition, Scaled, register, scale

__all__ = [
    "RopeConfig", "load_config_dict", "load_rope_config", "rope_config_from_dict",
    "DPRopeChoice", "angle_distribution", "disturbance", "dprope_choice", "method_disturbance", "select",
    "FAMILIES", "Family", "family", "ROPE_TYPES", "base_inv_freq", "rope_frequencies",
    "SCALINGS", "Composition", "Scaled", "register", "scale",
]
