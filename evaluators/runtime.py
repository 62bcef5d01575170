"""Process settings every evaluator applies: no network, and one CPU thread setting.

Evaluators run inside searches that may be offline and share a machine with other workers, so
they force the Hugging Face libraries offline themselves (environment variables for what is not
imported yet, module constants for what is) and set torch's thread count from one option.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator

from mergesearch import VERBOSE_ENV
from mergesearch.evaluators.errors import EvaluatorError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

# lm-eval explains at INFO/WARNING level, on every call, things a search does on purpose (wrap a
# live model object, build contexts): one line per trial that drowns the progress bar.
LIBRARY_LOG_LEVELS = {"lm_eval": logging.WARNING, "lm_eval.models.huggingface": logging.ERROR}


def force_offline() -> None:
    """Make the Hub unreachable for this process, even for libraries already imported."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if (hub := sys.modules.get("huggingface_hub.constants")) is not None:
        hub.HF_HUB_OFFLINE = True  # read at request time by huggingface_hub
    if (datasets_config := sys.modules.get("datasets.config")) is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _silence_datasets() -> None:
    """``datasets`` draws a bar for every local JSON split it loads ("Generating test split"):
    noise between a search's own progress lines."""
    try:
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def configure(threads: int | None = None) -> None:
    """Apply the evaluator process settings; ``threads=None`` keeps torch's current count.

    Rust tokenizers would run a thread pool of their own next to torch's: oversubscribed CPU
    threads slow evaluation down by an order of magnitude on a shared machine, so theirs is off
    unless the user turned it on.
    """
    force_offline()
    if not verbose():
        for name, level in LIBRARY_LOG_LEVELS.items():
            logging.getLogger(name).setLevel(level)
        _silence_datasets()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads is not None:
        if threads < 1:
            raise EvaluatorError(f"threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def quiet_bars(module_name: str) -> Iterator[None]:
    """Inside, ``module_name``'s tqdm bars are off (lm-eval draws one, unlabelled, per task
    whenever it builds requests, with no switch of its own); ``--verbose`` keeps them."""
    module = sys.modules.get(module_name)
    original = getattr(module, "tqdm", None)
    if verbose() or original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.tqdm = original  # type: ignore[union-attr]
