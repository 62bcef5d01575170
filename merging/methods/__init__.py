"""Merge methods: importing this package registers every method in ``METHODS``."""

from mergesearch.merging.methods import (
    arcee_fusion,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    passthrough,
    ram,
    sce,
    slerp,
    task_arithmetic,
)
from mergesearch.merging.methods.base import METHODS, REQUIRED, BaseRole, MergeMethod, get_method

__all__ = [
    "METHODS",
    "REQUIRED",
    "BaseRole",
    "MergeMethod",
    "arcee_fusion",
    "get_method",
    "karcher",
    "linear",
    "model_stock",
    "multislerp",
    "nearswap",
    "passthrough",
    "ram",
    "sce",
    "slerp",
    "task_arithmetic",
]
