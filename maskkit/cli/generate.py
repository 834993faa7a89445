"""`maskkit generate person | mask | incorrect | age`: synthetic people and images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import labels
from ..errors import InvalidInput
from ._app import app, check_device, console, output_file_option, progress_bar, state

generate_app = typer.Typer(help="Synthetic people and images (recorded with generator, parameters, seed, parent).",
                           no_args_is_help=True)
app.add_typer(generate_app, name="generate")

BAND_HELP = "Age band: young, middle or old."
STRENGTH_HELP = "Built-in prototype backend: how many times the prototypes' age difference is applied (default 2)."


def _backend(ctx, spec, checkpoint, strength, device):
    from ..faces.generate import load_age_backend

    with progress_bar("age prototypes") as progress:
        return load_age_backend(spec, checkpoint, device, catalog=state(ctx).catalog, strength=strength,
                                progress=progress)


def _band(name: Optional[str]) -> Optional[int]:
    if name is None:
        return None
    from ..catalog.relabel import BAND_ALIASES

    if name.lower() not in BAND_ALIASES:
        raise InvalidInput(f"unknown age band {name!r} (young, middle, old)")
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
    age_backend: Optional[str] = typer.Option(None, help="prototype (built in) or module:factory of an age model: "
                                              "then new faces aged from other bands' people."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    age_strength: Optional[float] = typer.Option(None, help=STRENGTH_HELP),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG of the first people made.",
                                          callback=output_file_option),
) -> None:
    """New synthetic people for an age band, 7 images each (new faces with an age backend, else re-masked)."""
    from ..faces.generate import generate_people

    backend = _backend(ctx, age_backend, age_checkpoint, age_strength, device) if (age_backend or age_checkpoint) else None
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
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG.",
                                          callback=output_file_option),
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
    sheet: Optional[Path] = typer.Option(None, help="Write a contact sheet PNG.",
                                          callback=output_file_option),
) -> None:
    """Masks worn wrong (under the nose, on the chin) on people's normal photos."""
    _masks(ctx, "incorrect", profiles, band, seed, templates, synthetic_only, device, sheet)


@generate_app.command("age")
def age(
    ctx: typer.Context,
    band: str = typer.Option("old", help="Target age band."),
    profiles: Optional[str] = typer.Option(None, help="Faces to age (default: everyone usable)."),
    count: Optional[int] = typer.Option(None, min=1, help="At most this many."),
    age_backend: Optional[str] = typer.Option(None, help="prototype (built in, the default) or module:factory "
                                              "(or $MASKKIT_AGE_BACKEND)."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    age_strength: Optional[float] = typer.Option(None, help=STRENGTH_HELP),
    seed: int = typer.Option(0, help="Random seed (same seed, same images)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
) -> None:
    """Age-transformed new faces (normal image only; `generate mask/incorrect --synthetic-only` completes them)."""
    from ..faces.generate import generate_aged

    backend = _backend(ctx, age_backend, age_checkpoint, age_strength, device)
    with progress_bar("generate age") as progress:
        report = generate_aged(state(ctx).catalog, backend, band=_band(band), profiles=_people(profiles), count=count,
                               seed=seed, device=device, progress=progress)
    _finish(ctx, report, None)


@generate_app.command("age-check")
def age_check(
    ctx: typer.Context,
    band: str = typer.Option("old", help="Target age band."),
    count: int = typer.Option(40, min=1, help="How many real faces from the other bands to age."),
    age_backend: Optional[str] = typer.Option(None, help="prototype (built in, the default) or module:factory."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    age_strength: Optional[float] = typer.Option(None, help=STRENGTH_HELP),
    seed: int = typer.Option(0, help="Which faces and target ages."),
    sheet: Optional[Path] = typer.Option(None, help="Write a before/after contact sheet PNG.",
                                          callback=output_file_option),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
) -> None:
    """Judge an age backend: an independent age estimator's band-hit rate and a face descriptor's identity check."""
    import json

    from ..faces.age_check import check_age_backend
    from ..files import output_file

    if sheet is not None:
        sheet = output_file(sheet, "--sheet")
    backend = _backend(ctx, age_backend, age_checkpoint, age_strength, device)
    with progress_bar("age-check") as progress:
        result = check_age_backend(state(ctx).catalog, backend, band=_band(band), count=count, seed=seed,
                                   sheet=sheet, progress=progress)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    console.print(
        f"[bold]{result.backend}[/] ageing {result.faces} real faces into {result.band}: the estimator places "
        f"[bold]{result.band_hit_after:.0%}[/] in {result.band} (before: {result.band_hit_before:.0%}; real "
        f"{result.band} people: {result.band_hit_real:.0%}); estimated age {result.estimated_age_before:.1f} -> "
        f"{result.estimated_age_after:.1f} (real: {result.estimated_age_real:.1f}); same person by dlib's descriptor: "
        f"[bold]{result.identity_kept:.0%}[/] (mean distance {result.identity_distance:.2f}); "
        f"{result.seconds_per_face * 1000:.0f} ms per face", highlight=False)
    if result.sheet:
        console.print(f"contact sheet: {result.sheet}", highlight=False)


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
