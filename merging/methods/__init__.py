"""Merge methods: importing this package registers every method in ``METHODS``."""

from mergesearch.merging.methods import (
    linear,
    model_stock,
    passthrough,
    slerp,
    task_arithmetic,
)
from mergesearch.merging.methods.base import METHODS, REQUIRED, BaseRole, MergeMethod, get_method

__all__ = [
    "METHODS",
    "REQUIRED",
    "BaseRole",
    "MergeMethod",
    "get_method",
    "linear",
    "model_stock",
    "passthrough",
    "slerp",
    "task_arithmetic",
]
