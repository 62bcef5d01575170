"""Files the installed program reads at run time, shipped as package data.

``merges/`` holds example mergekit-style merge configs, ``searches/`` example search specs (the
demo's first), ``tasks/`` the demo's local lm-eval task YAMLs with their JSONL data,
``demo-family/`` the canonical demo family (tokenizer, base, two specialists: trained once, so
every machine starts the demo from the same weights; training is not bit-reproducible across
CPUs). Code finds them through these paths, so an installed wheel and a checkout behave the
same.
"""

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent
MERGES_DIR = CONFIGS_DIR / "merges"
SEARCHES_DIR = CONFIGS_DIR / "searches"
TASKS_DIR = CONFIGS_DIR / "tasks"
DEMO_FAMILY_DIR = CONFIGS_DIR / "demo-family"
