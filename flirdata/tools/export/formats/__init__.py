"""The formats ``flirdata export`` writes: name -> ``Layout`` (see ``flirdata.tools.export.layout``).

Each format is one module here that makes one ``Layout`` (``LAYOUT``): ``coco`` (``data/`` and
``coco.json``, one split per folder) and ``yolo`` (``images/S``, ``labels/S`` and ``data.yaml``,
one dataset of several splits). A new format is a new module and its entry here (its import and
its place in ``LAYOUTS``). The command line's ``--format`` offers
``flirdata.names.EXPORT_FORMATS`` (re-exported as ``flirdata.tools.export.FORMATS``), a plain
tuple of the same names (parsing a command line imports no format), so its name goes there too:
a test holds the two equal.
"""

from __future__ import annotations

from flirdata.tools.export.formats import coco, yolo
from flirdata.tools.export.layout import ExportError, Layout

__all__ = ["LAYOUTS", "layout_for", "several_splits"]

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (coco.LAYOUT, yolo.LAYOUT)}


def layout_for(fmt: str) -> Layout:
    """The layout of format ``fmt``; an ``ExportError`` naming the formats there are if it is none."""
    try:
        return LAYOUTS[fmt]
    except (KeyError, TypeError):
        raise ExportError(f"format must be one of {tuple(LAYOUTS)}, got {fmt!r}") from None


def several_splits() -> list[str]:
    """The formats whose folder holds several splits (each export fills one)."""
    return [name for name, layout in LAYOUTS.items() if layout.splits]
