"""Spiking network: IF neurons with fused BPTT, gradient modes, spiking VGG, checkpoints.

Shapes are time first: inputs ``[T, B, C, H, W]``, logits ``[B, classes]``.
"""

from dvsguard.snn.checkpoint import FORMAT, load_checkpoint, load_model, model_payload, save_checkpoint
from dvsguard.snn.neuron import IFNeuron, gradient_mode, gradient_modes, if_reference, if_spikes, set_gradient_mode
from dvsguard.snn.surrogate import (
    ATAN,
    PAPER_ENSEMBLE,
    RGA,
    SIGMOID,
    SURROGATES,
    TRIANGLE,
    GradientMode,
    Surrogate,
    rate_grad,
    surrogate_grad,
)
from dvsguard.snn.vgg import SpikingVGG, VGGConfig, count_macs, num_parameters

__all__ = [
    "ATAN",
    "FORMAT",
    "PAPER_ENSEMBLE",
    "RGA",
    "SIGMOID",
    "SURROGATES",
    "TRIANGLE",
    "GradientMode",
    "IFNeuron",
    "SpikingVGG",
    "Surrogate",
    "VGGConfig",
    "count_macs",
    "gradient_mode",
    "gradient_modes",
    "if_reference",
    "if_spikes",
    "load_checkpoint",
    "load_model",
    "model_payload",
    "num_parameters",
    "rate_grad",
    "save_checkpoint",
    "set_gradient_mode",
    "surrogate_grad",
]
