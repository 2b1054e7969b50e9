"""Encoder, Cross-SEC, task heads and the per-method feature generator."""

from .cross_sec import CrossSEC
from .encoder import Encoder
from .feature_generator import FeatureGenerator, build_heads
from .heads import ClassificationHead, TaskHead

__all__ = ["ClassificationHead", "CrossSEC", "Encoder", "FeatureGenerator", "TaskHead", "build_heads"]
