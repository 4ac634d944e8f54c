"""imgclass: transfer-learning image classification, stage by stage (see README.md)."""

__version__ = "0.1.0"
