"""cdkd-ray: channel-dropout knowledge distillation for human pose on Ray."""

__version__ = "0.1.0"
