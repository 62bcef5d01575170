"""Recording the calls a test wants to count, while they still run."""

from __future__ import annotations

from typing import Any

import pytest


def record_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple]:
    """Replace ``owner.name`` (a function, or a method of a class) by one that appends its
    positional arguments to the returned list and then runs the original."""
    calls: list[tuple] = []
    original = getattr(owner, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls
