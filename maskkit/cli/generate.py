"""`maskkit generate person | mask | incorrect | age`: synthetic people and images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import labels
from ..errors import MaskkitError
from ._app import app, check_device, console, progress_bar, state

generate_app = typer.Typer(help="Synthetic people and images (recorded with generator, parameters, seed, parent).",
                           no_args_is_help=True)
app.add_typer(generate_app, name="generate")

BAND_HELP = "Age band: young, middle or old."


def _band(name: Optional[str]) -> Optional[int]:
    if name is None:
        return None
    from ..catalog.relabel import BAND_ALIASES

    if name.lower() not in BAND_ALIASES:
        raise MaskkitError(f"unknown age band {name!r} (young, middle, old)")
    return BAND_ALIASES[name.lower()]


def _people(profiles: Optional[str]) -> Optional[list[str]]:
    return [p.strip() for p in profiles.split(",") if p.strip()] if profiles else None


def _finish(ctx, report, sheet: Optional[Path]) -> None:
    from ..faces.generate import contact_sheet

    catalog = state(ctx).catalog
    made = f"{report.people_created:,} new people" + (f", {report.people_completed:,} completed" if report.people_completed else "")
    console.print(f"[bold]generate {report.what}[/]: {made}, {report.images:,} images; "
                  f"{report.skipped_no_face:,} of {report.sources:,} faces skipped (no landmarks): "
                  f"success {report.success_rate:.1%}", highlight=False)
    for path in report.skipped_examples[:5]:
        console.print(f"  skipped: {path}", highlight=False)
    if sheet and report.profile_ids:
        console.print(f"contact sheet: {contact_sheet(catalog, report.profile_ids, sheet)}", highlight=False)


@generate_app.command("person")
def person(
    ctx: typer.Context,
    band: str = typer.Option(..., help=BAND_HELP),
    count: int = typer.Option(..., min=1, help="How many people to make."),
    seed: int = typer.Option(0, help="Random seed (same seed, same people)."),
    templates: Optional[Path] = typer.Option(None, help="Mask templates in MaskTheFace's format (default: built in)."),
    age_backend: Optional[str] = typer.Option(None, help="module:factory of an age model (then new faces)."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG of the first people made."),
) -> None:
    """New synthetic people for an age band, 7 images each (new faces with an age backend, else re-masked)."""
    from ..faces.generate import generate_people, load_age_backend

    backend = load_age_backend(age_backend, age_checkpoint, device) if (age_backend or age_checkpoint) else None
    with progress_bar("generate person") as progress:
        report = generate_people(state(ctx).catalog, _band(band), count, seed=seed, templates_dir=templates,
                                 age_backend=backend, device=device, progress=progress)
    _finish(ctx, report, sheet)


def _masks(ctx, what: str, profiles, band, seed, templates, synthetic_only, device, sheet) -> None:
    from ..faces.generate import generate_masks

    with progress_bar(f"generate {what}") as progress:
        report = generate_masks(state(ctx).catalog, what, profiles=_people(profiles), band=_band(band), seed=seed,
                                templates_dir=templates, device=device, synthetic_only=synthetic_only,
                                progress=progress)
    _finish(ctx, report, sheet)


@generate_app.command("mask")
def mask(
    ctx: typer.Context,
    profiles: Optional[str] = typer.Option(None, help="Only these people (ids or folders, comma-separated)."),
    band: Optional[str] = typer.Option(None, help=BAND_HELP),
    synthetic_only: bool = typer.Option(False, help="Only complete synthetic people that lack mask1..5."),
    seed: int = typer.Option(0, help="Random seed (same seed, same images)."),
    templates: Optional[Path] = typer.Option(None, help="Mask templates in MaskTheFace's format."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG."),
) -> None:
    """Correctly worn masks (mask1..5) on people's normal photos."""
    _masks(ctx, "mask", profiles, band, seed, templates, synthetic_only, device, sheet)


@generate_app.command("incorrect")
def incorrect(
    ctx: typer.Context,
    profiles: Optional[str] = typer.Option(None, help="Only these people (ids or folders, comma-separated)."),
    band: Optional[str] = typer.Option(None, help=BAND_HELP),
    synthetic_only: bool = typer.Option(False, help="Only complete synthetic people that lack incorrect_mask."),
    seed: int = typer.Option(0, help="Random seed (same seed, same images)."),
    templates: Optional[Path] = typer.Option(None, help="Mask templates in MaskTheFace's format."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG."),
) -> None:
    """Masks worn wrong (under the nose, on the chin) on people's normal photos."""
    _masks(ctx, "incorrect", profiles, band, seed, templates, synthetic_only, device, sheet)


@generate_app.command("age")
def age(
    ctx: typer.Context,
    band: str = typer.Option("old", help="Target age band."),
    profiles: Optional[str] = typer.Option(None, help="Faces to age (default: everyone usable)."),
    count: Optional[int] = typer.Option(None, min=1, help="At most this many."),
    age_backend: Optional[str] = typer.Option(None, help="module:factory of the age model (or $MASKKIT_AGE_BACKEND)."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    seed: int = typer.Option(0, help="Random seed (same seed, same images)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
) -> None:
    """Age-transformed new faces (normal image only; `generate mask/incorrect --synthetic-only` completes them)."""
    from ..faces.generate import generate_aged, load_age_backend

    backend = load_age_backend(age_backend, age_checkpoint, device)
    with progress_bar("generate age") as progress:
        report = generate_aged(state(ctx).catalog, backend, band=_band(band), profiles=_people(profiles), count=count,
                               seed=seed, device=device, progress=progress)
    _finish(ctx, report, None)


@generate_app.command("status")
def status(ctx: typer.Context) -> None:
    """Synthetic people per age band and kind."""
    from ..faces.generate import synthetic_counts

    counts = synthetic_counts(state(ctx).catalog)
    if not counts:
        console.print("no synthetic people yet")
    for band in labels.AGE_BANDS:
        if band in counts:
            console.print(f"{band}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts[band].items())))
