"""The one reader of user YAML: what it accepts as PyYAML does, and what it refuses in one line."""

from __future__ import annotations

import pytest

from mergesearch.merging.errors import ConfigError
from mergesearch.merging.yaml_io import MAX_BYTES, MAX_DEPTH, MAX_VALUES, parse_yaml, read_yaml
from tests.helpers.hostile_yaml import alias_bomb, deep_nesting


def test_plain_yaml_reads_as_pyyaml_reads_it():
    text = "base: &b {t: 0.5, dtype: bfloat16}\nmodels:\n  - {<<: *b, t: 0.7}\n  - *b\n"
    data = parse_yaml(text, "x.yaml")
    assert data == {
        "base": {"t": 0.5, "dtype": "bfloat16"},
        "models": [{"t": 0.7, "dtype": "bfloat16"}, {"t": 0.5, "dtype": "bfloat16"}],
    }
    assert parse_yaml("\ufeffa: 1\n".encode(), "bom.yaml") == {"a": 1}  # a BOM is fine


def test_nesting_and_expansion_up_to_the_limits_are_fine():
    data, depth = parse_yaml(deep_nesting(MAX_DEPTH), "x"), 0
    while data:
        data, depth = data[0], depth + 1
    assert depth == MAX_DEPTH - 1 and data == []
    assert len(parse_yaml(alias_bomb(levels=3, width=20), "x")["a2"]) == 20  # 8000 values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (alias_bomb(), "line 6: YAML aliases expand to more than"),
        (alias_bomb(levels=30, width=2), "alias bomb"),
        (deep_nesting(), "line 1: YAML nested deeper than 64 levels"),
        ("a:\n" + "".join(f"{'  ' * k}k{k}:\n" for k in range(1, 80)), "nested deeper"),
        ("a: 1\nb:\n  c: 2\n  c: 3\n", "line 4: key 'c' appears twice in one mapping"),
        ("a: [1\n", "malformed YAML at line 2"),
        ("a: 1\x00", "control character 0x00"),
    ],
)
def test_refusals_are_one_line_naming_file_and_line(text, message):
    with pytest.raises(ConfigError, match=r"^x\.yaml: ") as err:
        parse_yaml(text, "x.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_files_beyond_the_size_limit_or_not_utf8_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# pad\n" * (MAX_BYTES // 6 + 1))
    with pytest.raises(ConfigError, match=r"big.yaml: over 1,048,576 bytes"):
        read_yaml(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("a: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: line 2: not UTF-8 text \(byte 0xe9"):
        read_yaml(latin)
    assert MAX_VALUES >= 10_000  # real configs, with per-layer gradients, stay far below
