"""Faust's ``fapp.Point`` Record, as JSON and as a caller's own class.

``point_hook`` and ``point_default`` are what a user passes to the App as
``json_object_hook`` and ``json_default`` to work with ``Point`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

#: The namespace Faust gives ``Point`` in ``tests/faust/fapp.py``.
POINT_NS = "fapp.Point"


def record(x: int, y: int) -> Dict[str, Any]:
    """A ``fapp.Point`` Faust Record, as its JSON reads."""
    return {"x": x, "y": y, "__faust": {"ns": POINT_NS}}


@dataclass(frozen=True)
class Point:
    """The caller's own class for Faust's ``fapp.Point``."""

    x: int
    y: int


def point_hook(obj: Dict[str, Any]) -> Any:
    if obj.get("__faust") == {"ns": POINT_NS}:
        return Point(obj["x"], obj["y"])
    return obj


def point_default(obj: Any) -> Any:
    if isinstance(obj, Point):
        return record(obj.x, obj.y)
    raise TypeError(f"cannot encode {obj!r}")
