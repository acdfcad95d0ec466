"""TABLE and JSON rendering of command results, as snowflake-cli prints them.

snow renders with rich (`box.ASCII`, overflow "fold"); this reproduces that
layout in a few lines so the one-shot commands need not import rich.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Literal

OutputFormat = Literal["TABLE", "JSON"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("TABLE", "JSON")


def render(result: Mapping[str, Any] | Sequence[Mapping[str, Any]], output_format: str) -> str:
    """One object or a list of rows, in the chosen format."""
    if output_format == "JSON":
        return render_json(result)
    if isinstance(result, Mapping):
        return render_object(result)
    return render_rows(result)


def render_json(result: Any) -> str:
    """snow's JSON: indent 4, keys in the order given."""
    return json.dumps(result, indent=4, default=str)


def render_object(result: Mapping[str, Any], width: int | None = None) -> str:
    """A `key | value` table, snow's TABLE output for a single object."""
    return render_table(["key", "value"], [[key, value] for key, value in result.items()], width)


def render_rows(rows: Sequence[Mapping[str, Any]], width: int | None = None) -> str:
    """A table with a column per key, snow's TABLE output for a collection."""
    if not rows:
        return "No data"
    columns = list(rows[0])
    return render_table(columns, [[row.get(c) for c in columns] for row in rows], width)


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = None
) -> str:
    """An ASCII-boxed table no wider than `width` (the terminal's by default)."""
    cells = [[_text(v) for v in row] for row in [header, *rows]]
    natural = [max(len(row[i]) for row in cells) for i in range(len(header))]
    frame = 3 * len(header) + 1
    available = (width or shutil.get_terminal_size().columns) - frame
    widths = fit_widths(natural, available)
    full = sum(widths) + frame - 2
    lines = ["+" + "-" * full + "+"]
    for index, row in enumerate(cells):
        wrapped = [_wrap(text, w) for text, w in zip(row, widths, strict=True)]
        for line in range(max(len(parts) for parts in wrapped)):
            parts = [p[line] if line < len(p) else "" for p in wrapped]
            lines.append(
                "| " + " | ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)) + " |"
            )
        if index == 0:
            lines.append("|" + "+".join("-" * (w + 2) for w in widths) + "|")
    lines.append("+" + "-" * full + "+")
    return "\n".join(lines)


def fit_widths(natural: Sequence[int], available: int) -> list[int]:
    """Shrink the widest columns first until the table fits, as rich does."""
    widths = list(natural)
    while sum(widths) > available:
        widest = max(widths)
        if widest <= 1:
            break
        second = max((w for w in widths if w < widest), default=0)
        excess = sum(widths) - available
        columns = [i for i, w in enumerate(widths) if w == widest]
        step = max(1, min(widest - max(second, 1), -(-excess // len(columns))))
        for i in columns:
            widths[i] = widest - step
    return widths


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(
            textwrap.wrap(paragraph, width, break_long_words=True, break_on_hyphens=False) or [""]
        )
    return lines
