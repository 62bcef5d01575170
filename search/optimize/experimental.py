"""Building Optuna objects that warn they are experimental, without the warning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import optuna

T = TypeVar("T")


def quietly(make: Callable[[], T]) -> T:
    """``make()`` with Optuna's ExperimentalWarning silenced: mergesearch pins the Optuna
    version it runs with, and its tests cover what it uses, so the warning tells a user nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make()
