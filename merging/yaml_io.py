"""The one reader of user YAML (merge configs, search specs): bounded, strict, one-line errors.

A YAML file is small, but what it expands to need not be: nine levels of nine aliases each are
a few hundred bytes that stand for hundreds of millions of values, and whatever walks the
loaded data afterwards (a deep copy, a schema check) expands them. Deep nesting overflows a
recursive reader. So the composer here counts as it goes and stops at the first limit passed,
before anything expands:

- ``MAX_BYTES`` of input (read no further: ``/dev/zero`` ends too);
- ``MAX_DEPTH`` levels of nesting;
- ``MAX_VALUES`` values after alias expansion (each alias counts the values it stands for).

It also refuses what PyYAML accepts silently: a key given twice in one mapping (the last would
win, so the first was edited for nothing) and text that is not UTF-8. Every refusal is a
``ConfigError`` naming the file, the line and what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from mergesearch.merging.errors import ConfigError

MAX_BYTES = 1 << 20  # configs and specs are kilobytes; this is far beyond any real one
MAX_DEPTH = 64
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A limit or rule of this reader, raised from inside the composer with its line."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts depth and expanded values while composing, and refuses
    duplicate keys. The pure-Python composer is used on purpose: the C one recurses in C, where
    no recursion limit stops a deep document."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._values: dict[int, int] = {}  # id(node) -> values it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # counted where it is used
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(
                    line,
                    f"YAML nested deeper than {MAX_DEPTH} levels; a config needs a handful",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_sequence_node(self, anchor: Any) -> Any:
        node = super().compose_sequence_node(anchor)
        self._count(node, node.value)
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        self._count(node, [part for pair in node.value for part in pair])
        _refuse_duplicate_keys(node)
        return node

    def _count(self, node: Any, children: list[Any]) -> None:
        total = 1 + sum(self._values.get(id(child), 1) for child in children)
        if total > MAX_VALUES:
            raise _Refused(
                node.start_mark.line + 1,
                f"YAML aliases expand to more than {MAX_VALUES} values (an alias bomb?); "
                "write the values out instead of repeating aliases",
            )
        self._values[id(node)] = total


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
            continue
        line, ident = key.start_mark.line + 1, (key.tag, key.value)
        if ident in seen:
            raise _Refused(
                line,
                f"key {key.value!r} appears twice in one mapping (first at line {seen[ident]}); "
                "keep one",
            )
        seen[ident] = line


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse YAML ``text``; ``source`` names it in errors (a path, ``<spec>``)."""
    if isinstance(text, bytes):
        text = _decode(text, source)
    if len(text) > MAX_BYTES:
        raise ConfigError(_too_large(source, len(text)))
    loader = None
    try:
        loader = BoundedLoader(text)
        return loader.get_single_data()
    except _Refused as err:
        raise ConfigError(f"{source}: line {err.line}: {err.message}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {_yaml_problem(err)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path | str, source: str | None = None) -> Any:
    """Read and parse the YAML file ``path`` (which the caller has checked exists)."""
    path = Path(path)
    source = source or str(path)
    try:
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{source}: not a regular file; give a YAML file")
            data = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{source}: cannot read ({err.strerror or err})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(_too_large(source, len(data)))
    return parse_yaml(data, source)


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); is this the YAML file? Save it as UTF-8"
        ) from None


def _too_large(source: str, size: int) -> str:
    shown = f"{size:,} bytes" if size <= MAX_BYTES else f"over {MAX_BYTES:,} bytes"
    return (
        f"{source}: {shown}; a YAML config is at most {MAX_BYTES:,} bytes: is this the right file?"
    )


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    line = f" at line {mark.line + 1}" if mark is not None else ""
    if isinstance(err, yaml.reader.ReaderError):  # a control character: binary data
        return (
            f"malformed YAML: control character 0x{err.character:02x} at offset {err.position} "
            "(binary data?); is this the YAML file?"
        )
    problem = getattr(err, "problem", None) or "invalid syntax"
    return f"malformed YAML{line}: {problem}"
