"""mergesearch: an Optuna search over LLM merge recipes, a streaming merge engine, evaluators.

The repository keeps its three packages as top-level folders (``merging/``, ``search/``,
``evaluators/``) plus ``configs/``; the packaging maps them under this namespace, so installed they
are ``mergesearch.merging``, ``mergesearch.search``, ``mergesearch.evaluators`` and
``mergesearch.configs`` (package data: example configs and the demo's task files). This folder
holds only what belongs to the namespace itself: the version and ``python -m mergesearch``.
"""

__version__ = "0.2.0"

# set (by `mergesearch --verbose`): third-party libraries may print their bars and notices
VERBOSE_ENV = "MERGESEARCH_VERBOSE"
