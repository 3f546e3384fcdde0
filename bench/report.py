"""Figures of one benchmark run: cells, rows, ratios, the table and the JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

#: Columns in table order: key, heading.
COLUMNS = (
    ("floor", "floor (kafka-python)"),
    ("faust", "Faust"),
    ("kafka", "replies, Kafka"),
    ("memory", "replies, memory://"),
)


@dataclass
class Cell:
    """One figure: a value, or why there is none (``status``), and its sample count."""

    value: Optional[float] = None
    n: int = 0
    status: str = "ok"  # "ok", "timeout", "hang", "error", "not measured"
    note: str = ""
    seconds: Optional[float] = None  # the timeout a "hang" or "timeout" ran into


    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"value": self.value, "n": self.n, "status": self.status}
        if self.note:
            out["note"] = self.note
        if self.seconds is not None:
            out["timeout_s"] = self.seconds
        return out

    def text(self, digits: int) -> str:
        if self.value is not None:
            return f"{self.value:,.{digits}f}"
        if self.status == "hang":
            return f"HANG >{self.seconds:.0f}s" if self.seconds else "HANG"
        return {"timeout": "timeout", "error": "error"}.get(self.status, "-")


@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    digits: int = 2
    cells: Dict[str, Cell] = field(default_factory=dict)

    def cell(self, column: str) -> Cell:
        return self.cells.get(column) or Cell(status="not measured")

    def ratio(self, column: str, reference: str) -> Optional[float]:
        a, b = self.cell(column).value, self.cell(reference).value
        if a is None or b is None or b == 0:
            return None
        return a / b

    def ratios(self) -> Dict[str, Optional[float]]:
        return {f"{c}/{r}": self.ratio(c, r)
                for c in ("kafka", "memory") for r in ("floor", "faust")}

    def verdict(self, column: str, reference: str) -> str:
        ratio = self.ratio(column, reference)
        if ratio is None:
            return "-"
        good = ratio <= 1 if self.better == "lower" else ratio >= 1
        return f"{ratio:.2f}x {'better' if good else 'worse'}" if not math.isclose(ratio, 1.0) else "1.00x same"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def table(rows: List[Row]) -> str:
    """The rows as a plain-text table, with the ratio columns."""
    head = ["row", "unit", "better"] + [h for _, h in COLUMNS] + ["Kafka / floor", "Kafka / Faust"]
    body = []
    for row in rows:
        body.append([row.label, row.unit, row.better]
                    + [row.cell(c).text(row.digits) for c, _ in COLUMNS]
                    + [row.verdict("kafka", "floor"), row.verdict("kafka", "faust")])
    counts_head = ["samples per cell"] + [h for _, h in COLUMNS]
    counts = [[row.label] + [str(row.cell(c).n or "-") for c, _ in COLUMNS] for row in rows]
    notes = [f"  {row.label}, {h}: {row.cell(c).status}: {row.cell(c).note}"
             for row in rows for c, h in COLUMNS if row.cell(c).note]
    text = _grid(head, body) + "\n\n" + _grid(counts_head, counts)
    if notes:
        text += "\n\nnotes:\n" + "\n".join(notes)
    return text


def _grid(head: List[str], body: List[List[str]]) -> str:
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]

    def fmt(line: List[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(line, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule] + [fmt(line) for line in body])


def as_json(rows: List[Row], meta: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "meta": meta,
        "columns": [c for c, _ in COLUMNS],
        "rows": [
            {
                "key": row.key,
                "label": row.label,
                "unit": row.unit,
                "better": row.better,
                "cells": {c: row.cell(c).as_dict() for c, _ in COLUMNS},
                "ratios": row.ratios(),
            }
            for row in rows
        ],
    }


def write_json(path: str, rows: List[Row], meta: Dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(as_json(rows, meta), out, indent=2)
        out.write("\n")
