"""Drop-in ``nn.Module`` wrappers: the generic one and one file per diffusers family."""

from __future__ import annotations

from .base import TensorRTModule, install, installed, make_component, uninstall

__all__ = ["TensorRTModule", "install", "installed", "make_component", "uninstall"]
