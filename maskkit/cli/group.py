"""`maskkit group NAME`: named dataset views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import labels
from ..errors import InvalidInput
from ._app import app, console, state


def _spec_from_flags(spec_file, variant, balance, exclude_ages, origin, include_bad, seed, tags) -> dict:
    from ..datasets.views import load_spec_file

    spec = load_spec_file(spec_file) if spec_file else {}
    people = dict(spec.get("people") or {})
    if exclude_ages:
        try:
            lo, hi = (int(v) for v in exclude_ages.split("-"))
        except ValueError:
            raise InvalidInput(f"--exclude-ages must look like 57-59, got {exclude_ages!r}") from None
        people["exclude_ages"] = [lo, hi]
    if origin:
        people["origin"] = origin
    if include_bad:
        people["exclude_bad"] = False
    if tags:
        people["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
    if people:
        spec["people"] = people
    if variant:
        spec["variant"] = variant
    if balance:
        if "=" in balance:
            targets = {}
            for part in balance.split(","):
                key, _, value = part.partition("=")
                try:
                    targets[key.strip()] = int(value)
                except ValueError:
                    raise InvalidInput(f"--balance targets look like young=500,old=500, got {balance!r}") from None
            spec["balance"] = targets
        else:
            spec["balance"] = balance
    if seed is not None:
        spec["seed"] = seed
    return spec


@app.command()
def group(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="View name."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="YAML view spec (flags override it)."),
    variant: Optional[str] = typer.Option(None, help="original, crop, rembg, crop+rembg or a variant name."),
    balance: Optional[str] = typer.Option(None, help="none, stage1, stage2 or young=N,middle=N,old=N."),
    exclude_ages: Optional[str] = typer.Option(None, help="Leave out ages in this range, e.g. 57-59."),
    origin: Optional[str] = typer.Option(None, help="any, original or synthetic people."),
    include_bad: bool = typer.Option(False, help="Keep people reviewed as bad."),
    tags: Optional[str] = typer.Option(None, help="Only people with one of these tags."),
    seed: Optional[int] = typer.Option(None, help="Seed for drawing synthetic people."),
    generate: bool = typer.Option(False, "--generate", help="Generate the synthetic people balancing needs."),
    age_backend: Optional[str] = typer.Option(None, help="With --generate: new faces from this age backend "
                                              "(prototype: built in) instead of re-masked people of the band."),
    replace: bool = typer.Option(False, help="Redefine an existing view."),
    refresh: bool = typer.Option(False, help="Materialize the view again from its spec."),
    show: bool = typer.Option(False, help="Counts per class and band of the view."),
    list_views: bool = typer.Option(False, "--list", help="List views (stale ones marked)."),
    diff: Optional[str] = typer.Option(None, help="Compare the view with another one."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output for --show/--diff/--list."),
) -> None:
    """Define, materialize and inspect named dataset views."""
    from ..datasets import views as lib

    catalog = state(ctx).catalog
    if list_views:
        _list(catalog, as_json)
        return
    if name is None:
        raise InvalidInput("give a view name (or --list)")
    if diff:
        d = lib.diff_views(catalog, name, diff)
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        console.print(f"{name} vs {diff}: people only in {name} {d['only_a_people']:,}, only in {diff} "
                      f"{d['only_b_people']:,}, in both {d['both_people']:,}; images only in {name} "
                      f"{d['only_a_images']:,}, only in {diff} {d['only_b_images']:,}; different label "
                      f"{d['different_label']:,}, different file {d['different_file']:,}", highlight=False)
        _class_table([(name, d["classes_a"]), (diff, d["classes_b"])])
        return
    if show:
        _show(catalog, name, as_json)
        return
    if refresh:
        view, old = lib.refresh_view(catalog, name)
        same = "unchanged" if old == view.content_hash else f"was {old[:12]}"
        console.print(f"view [bold]{name}[/] materialized again: {view.people:,} people, {view.images:,} images, "
                      f"hash {view.content_hash[:12]} ({same})", highlight=False)
        return
    spec = _spec_from_flags(spec_file, variant, balance, exclude_ages, origin, include_bad, seed, tags)
    if age_backend and not generate:
        raise InvalidInput("--age-backend is read with --generate")
    if generate:
        _generate_shortfall(ctx, catalog, spec, age_backend)
    view = lib.define_view(catalog, name, spec, replace=replace)
    console.print(f"view [bold]{name}[/]: {view.people:,} people, {view.images:,} images, "
                  f"hash {view.content_hash[:12]}", highlight=False)
    _show(catalog, name, False)


def _generate_shortfall(ctx, catalog, spec, age_backend: Optional[str]) -> None:
    """Make the synthetic people a balanced view lacks, so that materializing succeeds."""
    from ..datasets import views as lib
    from ..faces.generate import generate_people, load_age_backend
    from ._app import progress_bar

    normalized = lib.normalize_spec(spec)
    shortfall = lib.balance_shortfall(catalog, spec)
    backend = None
    if age_backend and shortfall:
        with progress_bar("age backend") as progress:
            backend = load_age_backend(age_backend, catalog=catalog, progress=progress)
    for band_name, missing in shortfall.items():
        console.print(f"generating {missing:,} synthetic {band_name} people for the balance"
                      + (f" (new faces, {backend.name} age backend)" if backend else " (re-masked)"))
        with progress_bar(f"generate {band_name}") as progress:
            generate_people(catalog, labels.AGE_BANDS.index(band_name), missing, seed=normalized["seed"],
                            age_backend=backend, progress=progress)


def _list(catalog, as_json: bool) -> None:
    from ..datasets.views import list_views

    rows = list_views(catalog)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="views")
    for col in ("name", "people", "images", "variant", "balance", "hash", "state"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], f"{r['people']:,}", f"{r['images']:,}", r["variant"], str(r["balance"]),
                      (r["hash"] or "")[:12], "[red]stale[/]" if r["stale"] else "current")
    console.print(table)


def _show(catalog, name: str, as_json: bool) -> None:
    from ..datasets import views as lib

    members = lib.snapshot(catalog, name)
    counts = lib.class_counts(members)
    origins = lib.origin_counts(catalog, members)
    stale = lib.staleness(catalog, name)
    view = lib.get_view(catalog, name)
    if as_json:
        typer.echo(json.dumps({"name": name, "spec": view.spec, "hash": view.content_hash, **counts,
                               "origins": origins, "stale": stale["stale"]}, indent=2))
        return
    bands = Table(title=f"view {name}: people per age band")
    bands.add_column("band")
    bands.add_column("people", justify="right")
    bands.add_column("of which")
    for b in labels.AGE_BANDS:
        bands.add_row(b, f"{counts['people_by_band'][b]:,}", ", ".join(f"{k} {v:,}" for k, v in sorted(origins[b].items())))
    console.print(bands)
    _class_table([(name, counts["classes"])])
    if stale["stale"]:
        console.print(f"[red]stale[/]: {stale.get('reason') or ''}{stale['changed_labels']} label(s) changed, "
                      f"{stale['added']} image(s) added, {stale['removed']} removed since materialization; "
                      f"maskkit group {name} --refresh", highlight=False)


def _class_table(columns) -> None:
    table = Table(title="images per class")
    table.add_column("class", justify="right")
    table.add_column("name")
    for title, _ in columns:
        table.add_column(title, justify="right")
    for c in range(labels.NUM_CLASSES):
        table.add_row(str(c), labels.class_name(c), *(f"{counts[c]:,}" for _, counts in columns))
    console.print(table)
