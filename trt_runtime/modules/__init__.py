"""Drop-in ``nn.Module`` wrappers: the generic one and one file per diffusers family."""

from __future__ import annotations

from .base import TensorRTModule, install, installed, make_component, uninstall
from .controlnet import apply_controlnet
from .family import Wrapped
from .text_encoders import apply_text_encoder
from .transformer import apply_transformer, wrap_module
from .unet import apply_unet
from .vae import apply_vae

__all__ = [
    "TensorRTModule",
    "Wrapped",
    "apply_controlnet",
    "apply_text_encoder",
    "apply_transformer",
    "apply_unet",
    "apply_vae",
    "install",
    "installed",
    "make_component",
    "uninstall",
    "wrap_module",
]
