"""`maskkit stats`: counts per label, class, gender x age band, and an age histogram."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import labels
from ._app import app, console, state


@app.command()
def stats(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable counts."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write PNG charts of the counts into this folder."),
) -> None:
    """Show what the catalog holds: people and images per label, the 18 classes, ages."""
    from ..catalog.stats import catalog_stats, plot_stats

    s = catalog_stats(state(ctx).catalog)
    written = plot_stats(s, plot) if plot else []
    if as_json:
        out = s.to_json()
        if written:
            out["plots"] = [str(p) for p in written]
        typer.echo(json.dumps(out, indent=2))
        return

    summary = Table(title="catalog", show_header=False)
    summary.add_row("people", f"{s.profiles:,}" + (f"  ({', '.join(f'{k} {v:,}' for k, v in sorted(s.profiles_by_origin.items()))})" if len(s.profiles_by_origin) > 1 else ""))
    summary.add_row("images", f"{s.images:,}")
    summary.add_row("damaged images", f"{len(s.damaged):,}")
    summary.add_row("eval images", f"{s.eval_images:,}")
    console.print(summary)
    for path in s.damaged:
        console.print(f"  [yellow]damaged:[/] {path}", highlight=False)

    per_label = Table(title="per label")
    per_label.add_column("label")
    per_label.add_column("value")
    per_label.add_column("people", justify="right")
    per_label.add_column("images", justify="right")
    for g in labels.GENDERS:
        per_label.add_row("gender", g, f"{s.people_by_gender.get(g, 0):,}", f"{s.images_by_gender.get(g, 0):,}")
    for b, r in zip(labels.AGE_BANDS, labels.AGE_BAND_RANGES):
        per_label.add_row("age band", f"{b} ({r})", f"{s.people_by_band[b]:,}", f"{s.images_by_band[b]:,}")
    for m in labels.MASK_STATES:
        per_label.add_row("mask", m, "", f"{s.images_by_mask[m]:,}")
    console.print(per_label)

    ga = Table(title="people: gender x age band")
    ga.add_column("")
    for b, r in zip(labels.AGE_BANDS, labels.AGE_BAND_RANGES):
        ga.add_column(f"{b} {r}", justify="right")
    for g in labels.GENDERS:
        ga.add_row(g, *(f"{s.people_gender_band[g][b]:,}" for b in labels.AGE_BANDS))
    console.print(ga)

    classes = Table(title="18 classes (usable images)")
    classes.add_column("class", justify="right")
    classes.add_column("mask")
    classes.add_column("gender")
    classes.add_column("age band")
    classes.add_column("images", justify="right")
    total = sum(s.class_counts) or 1
    classes.add_column("share", justify="right")
    for c, n in enumerate(s.class_counts):
        m, g, a = labels.decode(c)
        classes.add_row(str(c), labels.MASK_STATES[m], labels.GENDERS[g], labels.AGE_BANDS[a], f"{n:,}", f"{n / total:.1%}")
    console.print(classes)

    if s.age_histogram:
        hist = Table(title="age histogram (people, 5-year bins)")
        hist.add_column("ages")
        hist.add_column("people", justify="right")
        hist.add_column("")
        bins: dict[int, int] = {}
        for age, n in s.age_histogram.items():
            bins[age // 5 * 5] = bins.get(age // 5 * 5, 0) + n
        peak = max(bins.values())
        for start in sorted(bins):
            hist.add_row(f"{start}-{start + 4}", f"{bins[start]:,}", "█" * max(1, round(30 * bins[start] / peak)))
        console.print(hist)
    for path in written:
        console.print(f"wrote {path}")
