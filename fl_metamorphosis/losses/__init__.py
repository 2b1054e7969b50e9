"""Task losses, de-correlation (batch and per-sample forms) and the combined objective."""

from .decorrelation import batch_decorrelation, per_sample_cosine, per_sample_impurity, per_sample_overlap
from .distance_correlation import u_distance_correlation_sqr
from .objective import Objective

__all__ = [
    "Objective",
    "batch_decorrelation",
    "per_sample_cosine",
    "per_sample_impurity",
    "per_sample_overlap",
    "u_distance_correlation_sqr",
]
