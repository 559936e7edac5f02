"""DPSNet for Automatic Check-Out."""
from .model import DPSNet, dpsnet_model

__all__ = ["DPSNet", "dpsnet_model"]
__version__ = "0.1.0"
