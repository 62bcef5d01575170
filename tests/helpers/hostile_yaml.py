"""YAML that is small on disk and hostile to a naive reader."""

from __future__ import annotations


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML standing for ``width ** levels`` values ("billion laughs")."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def deep_nesting(depth: int = 100_000) -> str:
    """A YAML flow sequence nested ``depth`` levels deep (a recursive reader overflows)."""
    return "[" * depth + "]" * depth + "\n"
