"""`maskkit preprocess crop | rembg | crop+rembg`, `--report VARIANT`, `--list`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import InvalidInput
from ._app import app, check_device, console, output_file_option, progress_bar, state


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInput(f"--size must look like 240x320, got {text!r}") from None
    return w, h


def _colour(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InvalidInput(f"--fill must be R,G,B (0..255), got {text!r}") from None
    if len(parts) != 3:
        raise InvalidInput(f"--fill must be R,G,B (0..255), got {text!r}")
    return parts  # type: ignore[return-value]


@app.command()
def preprocess(
    ctx: typer.Context,
    kind: Optional[str] = typer.Argument(None, help="crop, rembg or crop+rembg."),
    target: str = typer.Option("train", help="train, eval or all (train + eval)."),
    profiles: Optional[str] = typer.Option(None, help="Only these people (comma-separated ids or folders)."),
    view: Optional[str] = typer.Option(None, help="Only the images of this dataset view."),
    name: Optional[str] = typer.Option(None, help="Variant name (default: the kind, versioned when parameters differ)."),
    margin: float = typer.Option(0.3, help="crop: margin around the face box, as a fraction of it."),
    size: str = typer.Option("240x320", help="crop: output WIDTHxHEIGHT (also fixes the aspect)."),
    min_face: float = typer.Option(80.0, help="crop: smallest face to look for, in pixels."),
    select: str = typer.Option("largest", help="crop: main face = largest, central or confident."),
    model: str = typer.Option("u2netp", help="rembg: model name (u2net, u2netp, ...); file in $U2NET_HOME."),
    fill: str = typer.Option("0,0,0", help="rembg: background colour R,G,B."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    batch_size: int = typer.Option(16, min=1, help="Images per detection batch."),
    workers: int = typer.Option(2, min=1, help="Threads decoding and writing images."),
    report: Optional[str] = typer.Option(None, help="Report on a variant: detection rate, fallbacks, contact sheet."),
    sheet: Optional[Path] = typer.Option(None, help="With --report: where to write the contact sheet PNG.",
                                          callback=output_file_option),
    list_variants: bool = typer.Option(False, "--list", help="List the variants in the catalog."),
) -> None:
    """Face crops (MTCNN) and background removal (rembg) as tracked, resumable image variants."""
    from ..faces import preprocess as lib
    from ..faces.background import RembgParams
    from ..faces.crop import CropParams

    catalog = state(ctx).catalog
    if list_variants:
        _list(catalog)
        return
    if report:
        _report(catalog, lib.get_variant(catalog, report), sheet)
        return
    if kind is None:
        raise InvalidInput("give a kind (crop, rembg, crop+rembg), --report VARIANT or --list")
    if target not in ("train", "eval", "all"):
        raise InvalidInput(f"--target must be train, eval or all, got {target!r}")
    width, height = _size(size)
    jobs = []
    if target in ("train", "all"):
        image_ids = None
        if view:
            from ..datasets.views import view_image_ids

            image_ids = view_image_ids(catalog, view)
        people = [p.strip() for p in profiles.split(",") if p.strip()] if profiles else None
        jobs.append(("train", *lib.train_targets(catalog, profiles=people, image_ids=image_ids)))
    if target in ("eval", "all"):
        jobs.append(("eval", *lib.eval_targets(catalog)))
    # the variant is recorded only once every target is known to be valid
    variant = lib.ensure_variant(
        catalog, kind, CropParams(margin=margin, width=width, height=height, min_face_px=min_face, select=select),
        RembgParams(model=model, fill=_colour(fill)), name=name)
    processor = lib.Preprocessor(catalog, variant, device=device, batch_size=batch_size, workers=workers)
    for label, targets, damaged in jobs:
        with progress_bar(f"{variant.name} {label}") as progress:
            r = processor.run(targets, damaged=damaged, progress=progress)
        rate = r.done / r.seconds if r.seconds else 0.0
        console.print(f"[bold]{variant.name}[/] {label}: {r.total:,} images, {r.already:,} done before, "
                      f"{r.done:,} now ({rate:,.1f} images/s, {r.threads} thread(s)): {r.ok:,} ok, {r.relaxed:,} found on a second look, "
                      f"{r.borrowed:,} boxed from the person's other photos, "
                      + (f"{r.inherited:,} cut at their parent photo's face, " if r.inherited else "")
                      + f"{r.fallback:,} fallback, "
                      f"{r.failed:,} failed" + (f"; {damaged} damaged skipped" if damaged else ""), highlight=False)
        for line in r.failures[:10]:
            console.print(f"  [red]failed[/] {line}", highlight=False)
    console.print(f"variant [bold]{variant.name}[/] lives in {processor.root / variant.folder}", highlight=False)


def _list(catalog) -> None:
    from ..faces.preprocess import list_variants

    table = Table(title="variants")
    for col in ("name", "kind", "images", "ok", "second look", "inherited", "borrowed box", "fallback", "failed", "params"):
        table.add_column(col)
    for s in list_variants(catalog):
        params = {k: v for k, v in s["params"].items() if k != "kind"}
        table.add_row(s["variant"], s["kind"], f"{s['total']:,}", f"{s['ok']:,}", f"{s['relaxed']:,}",
                      f"{s['inherited']:,}", f"{s['borrowed']:,}", f"{s['fallback']:,}", f"{s['failed']:,}", str(params))
    console.print(table)


def _report(catalog, variant, sheet: Optional[Path]) -> None:
    from ..faces.preprocess import contact_sheet, variant_summary

    s = variant_summary(catalog, variant)
    console.print(f"[bold]{variant.name}[/] ({variant.kind}): {s['total']:,} images, face found in "
                  f"{s['ok'] + s['relaxed']:,} ({s['detection_rate']:.1%}; {s['relaxed']:,} on a second look), "
                  f"{s['inherited']:,} synthetic ones cut at their parent photo's face, "
                  f"{s['borrowed']:,} boxed from the person's other photos, {s['fallback']:,} fallback "
                  f"({s['fallback_rate']:.1%}), {s['failed']:,} failed", highlight=False)
    for path in s["fallbacks"][:50]:
        console.print(f"  fallback: {path}", highlight=False)
    if len(s["fallbacks"]) > 50:
        console.print(f"  ... and {len(s['fallbacks']) - 50} more")
    out = sheet or Path("runs") / "preprocess" / f"{variant.name.replace('+', '_')}_sheet.png"
    console.print(f"contact sheet: {contact_sheet(catalog, variant, out)}", highlight=False)
