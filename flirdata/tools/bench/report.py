"""Benchmark results as people read them: derived ratios, text and markdown tables, a plot.

Pure functions over the bench's records (one dict per measured point), so the arithmetic of
speedup, efficiency and fraction of ideal lives in one place and is tested apart from timing.
"""

from __future__ import annotations

import argparse
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flirdata.tools.bench.machine import machine_line

__all__ = [
    "Record",
    "Column",
    "text_columns",
    "add_ratios",
    "efficiency_cause",
    "efficiency_notes",
    "best_per_size",
    "format_table",
    "markdown_table",
    "write_json",
    "write_markdown",
    "replace_block",
    "publish",
    "add_results_options",
    "plot_speedup",
    "POINT_COLUMNS",
    "BEST_COLUMNS",
    "RATIOS_NOTE",
]

Record = dict[str, Any]
BASELINE = "sequential"


def add_ratios(records: Sequence[Record], cores: int) -> list[Record]:
    """Copies of ``records`` with ``point_cores``, ``speedup``, ``efficiency`` and ``fraction_of_ideal``.

    The baseline of a size is the sequential record of that size from the same run, so the
    ratios never mix machines or days. ``point_cores`` is ``min(workers, cores)``, the cores a
    point can use: more workers than cores only time-share the same cores. ``speedup`` is the
    rate over the baseline's and ``efficiency`` is ``speedup / point_cores`` (the baseline runs on
    one core, so 1.0 is linear scaling; ``efficiency_cause`` says why a point exceeds it).
    Ideal is ``point_cores`` times the single-thread tight-loop rate in a warmed worker-like
    process (``tight_images_per_s``).
    """
    base = {r["size"]: r["images_per_s"] for r in records if r["backend"] == BASELINE}
    out = []
    for r in records:
        seq = base.get(r["size"])
        point_cores = min(r["workers"], cores)
        ideal = point_cores * r["tight_images_per_s"]
        speedup = r["images_per_s"] / seq if seq else float("nan")
        out.append(
            {
                **r,
                "point_cores": point_cores,
                "speedup": speedup,
                "efficiency": speedup / point_cores,
                "ideal_images_per_s": ideal,
                "fraction_of_ideal": r["images_per_s"] / ideal,
            }
        )
    return out


def efficiency_cause(point: Record, base: Record) -> str:
    """Why ``point``'s efficiency is above 1, from what both windows measured; "" when it is not.

    Neither can beat linear scaling on the same work, so one of them did not do the same work at
    the same cost: the baseline shared the machine with more load, or each image cost the point
    less CPU (a warmer process, another allocator or thread set-up), or the repeats' spread
    covers it. Keys a record may lack (older JSON) count as unknown.
    """
    if not point["efficiency"] > 1.0:  # also NaN: no baseline
        return ""
    nan = float("nan")
    busy_base, busy_point = base.get("others_cores", nan), point.get("others_cores", nan)
    cpu_base, cpu_point = base.get("cpu_ms_per_image", nan), point.get("cpu_ms_per_image", nan)
    worst = point.get("images_per_s_min", nan) / base.get("images_per_s_max", nan) / point["point_cores"]
    if busy_base > busy_point + 0.25:
        return f"the baseline shared the machine: others took {busy_base:.2f} cores then, {busy_point:.2f} here"
    if cpu_base >= point["efficiency"] * cpu_point:  # the CPU ratio accounts for the excess
        return f"each image cost less CPU here ({cpu_point:.2f} ms) than in the baseline ({cpu_base:.2f} ms)"
    if worst <= 1.0:
        return f"within the repeats' spread (slowest repeat over the baseline's fastest, per core: {worst:.2f})"
    busiest = max(busy_base, busy_point)
    return f"not explained by the CPU counters (other processes took up to {busiest:.2f} cores): measure again"


def efficiency_notes(records: Sequence[Record]) -> list[str]:
    """One line per point whose efficiency is above 1, with its cause."""
    base = {r["size"]: r for r in records if r["backend"] == BASELINE}
    notes = []
    for r in records:
        cause = efficiency_cause(r, base[r["size"]]) if r["size"] in base else ""
        if cause:
            point = f"{r['size']} {_backend_cell(r)} x{r['workers']}"
            notes.append(f"* {point}: efficiency {r['efficiency']:.2f} > 1: {cause}")
    return notes


def _efficiency_cell(r: Record) -> str:
    """The efficiency; a ``*`` marks one above 1 (its cause is in ``efficiency_notes``)."""
    return f"{r['efficiency']:.2f}" + ("*" if r["efficiency"] > 1.0 else "")


def best_per_size(records: Sequence[Record]) -> list[Record]:
    """For every (size, backend) the record of highest speedup (fewer workers on a tie).

    Points that ``make_loader`` ran in the calling thread (``workers <= 1``) do not count
    for a parallel backend that has other points: they are the sequential path again.
    """
    best: dict[tuple[str, str], Record] = {}
    parallel = {(r["size"], r["backend"]) for r in records if r.get("runs_as", r["backend"]) == r["backend"]}
    for r in records:
        key = (r["size"], r["backend"])
        if key in parallel and r.get("runs_as", r["backend"]) != r["backend"]:
            continue
        old = best.get(key)
        if old is None or (r["speedup"], -r["workers"]) > (old["speedup"], -old["workers"]):
            best[key] = r
    return list(best.values())


def _backend_cell(r: Record) -> str:
    runs_as = r.get("runs_as", r["backend"])
    return r["backend"] if runs_as == r["backend"] else f"{r['backend']} (as {runs_as})"


Column = tuple[str, Callable[[Record], str]]


def text_columns(*names: str) -> list[Column]:
    """Columns for rows whose cells are already text: ``{column name: cell}``."""
    return [(name, operator.itemgetter(name)) for name in names]


POINT_COLUMNS: list[Column] = [
    ("size", lambda r: f"{r['size']} ({r['images']})"),
    ("backend", _backend_cell),
    ("workers", lambda r: str(r["workers"])),
    (
        "images/s (min-max)",
        lambda r: f"{r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f})",
    ),
    ("speedup", lambda r: f"{r['speedup']:.2f}"),
    ("efficiency", _efficiency_cell),
    ("of ideal", lambda r: f"{r['fraction_of_ideal']:.2f}"),
    ("CPU ms/image", lambda r: f"{r.get('cpu_ms_per_image', float('nan')):.2f}"),
    ("others (cores)", lambda r: f"{r.get('others_cores', float('nan')):.2f}"),
    ("startup s", lambda r: f"{r['startup_s']:.2f}"),
    ("epoch s (est.)", lambda r: f"{r['epoch_s']:.1f}"),
    ("peak PSS MB", lambda r: f"{r['peak_pss_mb']:.0f}"),
]

# The course report's table (best cores per technique and dataset size), with the rate and CPU cost.
BEST_COLUMNS: list[Column] = [
    ("size", lambda r: f"{r['size']} ({r['images']})"),
    ("technique", lambda r: r["backend"]),
    ("workers", lambda r: str(r["workers"])),
    ("cores", lambda r: str(r["point_cores"])),
    ("images/s", lambda r: f"{r['images_per_s']:.1f}"),
    ("speedup", lambda r: f"{r['speedup']:.2f}"),
    ("efficiency", _efficiency_cell),
    ("CPU ms/image", lambda r: f"{r.get('cpu_ms_per_image', float('nan')):.2f}"),
]

# How the ratios above are computed, said wherever they are printed.
RATIOS_NOTE = (
    "speedup = images/s over the sequential baseline's (same run, same size; the baseline runs in the "
    "calling thread with one thread per library, as every worker does); efficiency = speedup / cores, "
    "cores = min(workers, the machine's cores); of ideal = images/s over cores x the 1-thread tight loop "
    "in a warmed worker process; CPU ms/image = CPU of the whole process tree over the timed window; "
    "others = the most cores other processes of the machine took during a timed window; "
    "* = efficiency above 1, cause below"
)


def _cells(records: Iterable[Record], columns: Sequence[Column]) -> list[list[str]]:
    return [[fmt(r) for _, fmt in columns] for r in records]


def format_table(records: Sequence[Record], columns: Sequence[Column]) -> str:
    """A fixed-width text table (numbers right-aligned) for the terminal."""
    rows = [[name for name, _ in columns], *_cells(records, columns)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(columns))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: Sequence[Record], columns: Sequence[Column], align: str | None = None) -> str:
    """A GitHub markdown table with the same cells as ``format_table``.

    ``align`` has one letter per column: ``l`` left, ``r`` right, ``c`` centred; by default
    the first two columns are left-aligned and the numbers after them right-aligned.
    """
    align = align or ("ll" + "r" * len(columns))[: len(columns)]
    if len(align) != len(columns) or set(align) - set(_RULES):
        raise ValueError(f"align {align!r}: expected one of {sorted(_RULES)} per column ({len(columns)})")
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "| " + " | ".join(_RULES[a] for a in align) + " |"
    body = ["| " + " | ".join(row) + " |" for row in _cells(records, columns)]
    return "\n".join([head, rule, *body])


_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def write_json(path: str | Path, records: Sequence[Record]) -> None:
    """A list of records, one per point; each carries the machine and versions it ran on."""
    Path(path).write_text(json.dumps(list(records), indent=1) + "\n")


def write_markdown(
    path: str | Path, records: Sequence[Record], meta: dict[str, Any], command: str, notes: Sequence[str] = ()
) -> None:
    """Both tables under a header saying where, when and how they were measured."""
    text = [
        "# flirdata bench",
        "",
        f"Measured {machine_line(meta)}.",
        "",
        f"Command: `{command}`",
        "",
        *[f"{note}." for note in notes],
        "",
        f"{RATIOS_NOTE[0].upper()}{RATIOS_NOTE[1:]}.",
        "",
        "## Best cores per technique and size",
        "",
        markdown_table(best_per_size(records), BEST_COLUMNS),
        "",
        "## Every point",
        "",
        markdown_table(records, POINT_COLUMNS),
        "",
        *efficiency_notes(records),
        "",
    ]
    Path(path).write_text("\n".join(text))


def replace_block(path: str | Path, name: str, text: str, heading: str) -> None:
    """Put ``text`` between ``name``'s begin/end markers in the markdown file ``path``.

    What stands outside the markers (analysis written by hand) stays; a file without them
    gets ``heading`` and the block appended, a missing file is started.
    """
    path = Path(path)
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    path.write_text(new)


def plot_speedup(path: str | Path, records: Sequence[Record], cores: int) -> None:
    """Speedup against workers, one line per backend, one panel per dataset size.

    Two reference lines, both labelled: linear scaling of the measured baseline (the ideal
    speedup, ``min(workers, cores)``, 1.0 at 1 worker) and the warmed tight loop's ideal (the
    "of ideal" column) in the same units, which starts at the tight loop's rate over the
    baseline's: the same work in a warmed worker process rather than through the loader here.
    The legend sits under the panels and the figure is saved to fit it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in records))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes) + 1.5, 4.6), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes, strict=True):
        _plot_panel(ax, [r for r in records if r["size"] == size], cores)
    # Set once, after every panel: a limit set per panel freezes the shared axis at the first.
    top = max(ax.dataLim.y1 for ax in axes[0])
    axes[0][0].set_ylim(0, 1.1 * max(top, 1.0))
    axes[0][0].set_ylabel("speedup over sequential")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=8,
        frameon=False,
        title="x: a backend at 1 worker, which make_loader runs in-thread (the sequential path again)",
        title_fontsize=8,
    )
    fig.suptitle(f"flirdata bench: {records[0].get('cpu', '')}, {cores} cores", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # the top 5% for the suptitle
    # bbox_inches="tight" grows the saved figure to hold the legend under the panels (and the title).
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_panel(ax: Any, records: Sequence[Record], cores: int) -> None:
    workers = sorted({r["workers"] for r in records})
    seq = next((r for r in records if r["backend"] == BASELINE), None)
    if seq is not None:
        linear = [min(w, cores) for w in workers]
        ax.plot(workers, linear, "k--", lw=1, label=f"ideal: sequential rate x min(workers, {cores} cores)")
        tight = seq["tight_images_per_s"] / seq["images_per_s"]
        ax.plot(
            workers,
            [min(w, cores) * tight for w in workers],
            color="grey",
            ls="-.",
            lw=1,
            label=f"warmed 1-worker tight loop x min(workers, {cores}) (the 'of ideal' column's ideal)",
        )
        ax.annotate(
            f"{tight:.2f}: tight loop in a warmed\nworker process / the baseline",
            (workers[0], tight),
            xytext=(4, -30),
            textcoords="offset points",
            fontsize=7,
            color="grey",
        )
        ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="sequential baseline (1 core)")
    for backend in dict.fromkeys(r["backend"] for r in records if r["backend"] != BASELINE):
        points = sorted((r for r in records if r["backend"] == backend), key=lambda r: r["workers"])
        pooled = [r for r in points if r.get("runs_as", backend) == backend]
        xs = [r["workers"] for r in pooled]
        ys = [r["speedup"] for r in pooled]
        lo = [r["speedup"] * (1 - r["images_per_s_min"] / r["images_per_s"]) for r in pooled]
        hi = [r["speedup"] * (r["images_per_s_max"] / r["images_per_s"] - 1) for r in pooled]
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=2, label=f"{backend} (min-max)")
        # Points make_loader ran in the calling thread: the sequential path, measured again.
        in_thread = [r for r in points if r not in pooled]
        ax.plot(
            [r["workers"] for r in in_thread], [r["speedup"] for r in in_thread], "x", color=line[0].get_color(), ms=6
        )
    ax.set_title(f"{records[0]['size']} ({records[0]['images']} images)")
    ax.set_xlabel("workers")
    ax.set_xticks(workers)
    ax.grid(alpha=0.3)


def publish(text: str, results: str | Path | None, name: str, heading: str) -> int:
    """A benchmark script's last step: print its block, and write it into ``results`` unless None."""
    print(text)
    if results is not None:
        replace_block(results, name, text, heading)
    return 0


def add_results_options(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--results FILE`` (the markdown whose block a script replaces) and ``--no-write``."""
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    parser.add_argument("--results", type=Path, default=default, help="the markdown file whose block is replaced")
