"""TABLE and JSON output must match what `snow` (rich, box.ASCII) prints."""

from __future__ import annotations

import json

import pytest

from spcs_registry_agent.output import fit_widths, render, render_object, render_rows

LONG_TOKEN = "ver:1-hint:1234-" + "ABCDEFGHIJ" * 20

# Captured from rich 14 (snowflake-cli 3.30's renderer) at 80 columns.
SNOW_TABLE_LONG = """\
+------------------------------------------------------------------------------+
| key        | value                                                           |
|------------+-----------------------------------------------------------------|
| token      | ver:1-hint:1234-ABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFG |
|            | HIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJ |
|            | ABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABC |
|            | DEFGHIJABCDEFGHIJABCDEFGHIJ                                     |
| expires_in | 3600                                                            |
+------------------------------------------------------------------------------+"""

SNOW_TABLE_SHORT = """\
+--------------------+
| key        | value |
|------------+-------|
| token      | short |
| expires_in | 3600  |
+--------------------+"""


def test_object_table_folds_long_values_like_snow() -> None:
    assert render_object({"token": LONG_TOKEN, "expires_in": 3600}, 80) == SNOW_TABLE_LONG


def test_object_table_keeps_natural_width_when_it_fits() -> None:
    assert render_object({"token": "short", "expires_in": 3600}, 80) == SNOW_TABLE_SHORT


def test_table_width_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    lines = render({"token": LONG_TOKEN, "expires_in": 3600}, "TABLE").splitlines()
    assert {len(line) for line in lines} == {50}


def test_json_is_snows_indent_four_in_key_order() -> None:
    text = render({"token": "abc", "expires_in": 3600}, "JSON")
    assert text == '{\n    "token": "abc",\n    "expires_in": 3600\n}'
    assert list(json.loads(text)) == ["token", "expires_in"]


def test_rows_table_has_a_column_per_key_and_wraps_words() -> None:
    rows: list[dict[str, str | None]] = [
        {"registry": "a.example", "state": "ok", "error": None},
        {"registry": "b.example", "state": "failing", "error": "connection refused by peer"},
    ]
    text = render_rows(rows, 40)
    lines = text.splitlines()
    assert lines[1] == "| registry  | state   | error          |"
    assert "| b.example | failing | connection     |" in lines
    assert "|           |         | refused by     |" in lines
    assert {len(line) for line in lines} == {40}


def test_no_rows_says_no_data() -> None:
    assert render_rows([], 80) == "No data"


@pytest.mark.parametrize(
    ("natural", "available", "expected"),
    [
        ([10, 200], 73, [10, 63]),
        ([5, 5], 20, [5, 5]),
        ([30, 30, 4], 40, [18, 18, 4]),
        ([3, 3], 1, [1, 1]),
    ],
)
def test_fit_widths_shrinks_the_widest_first(
    natural: list[int], available: int, expected: list[int]
) -> None:
    assert fit_widths(natural, available) == expected
