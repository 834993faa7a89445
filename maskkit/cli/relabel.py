"""`maskkit relabel`: label fixes with full history, one at a time or in bulk."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer
from rich.table import Table

from .. import labels
from ..errors import InvalidInput
from ._app import app, console, print_left_out, progress_bar, settled_left_out, state


@app.command()
def relabel(
    ctx: typer.Context,
    person: Optional[str] = typer.Argument(None, help="Person id (000123, 001498-1) or folder name."),
    gender: Optional[str] = typer.Option(None, help="New gender: male, female or flip."),
    age: Optional[int] = typer.Option(None, help="New age in years."),
    age_band: Optional[str] = typer.Option(None, help="Move into a band (young/middle/old): nearest age inside it."),
    race: Optional[str] = typer.Option(None, help="New race."),
    image: Optional[str] = typer.Option(None, help="Image to fix, ID:KIND (e.g. 000123:incorrect_mask); with --mask."),
    mask: Optional[str] = typer.Option(None, help="New mask state of --image: wear, incorrect, not_wear (or a kind)."),
    swap: Optional[Tuple[str, str, str]] = typer.Option(None, help="ID KIND KIND: swap two images' mask states.",
                                                        show_default=False),
    reason: Optional[str] = typer.Option(None, help="Why (kept in the history)."),
    by: Optional[str] = typer.Option(None, "--by", help="Who makes the change (default $MASKKIT_USER or $USER)."),
    from_csv: Optional[Path] = typer.Option(None, help="Bulk fixes: CSV id,field,value[,kind][,reason]; all or nothing."),
    known_fixes: bool = typer.Option(False, help="Apply the label errors teams agreed on for the competition data."),
    less_agreed: bool = typer.Option(False, help="With --known-fixes: also the less agreed gender flips."),
    show_history: bool = typer.Option(False, "--history", help="Show the label history (of PERSON, if given)."),
    undo_event: Optional[int] = typer.Option(None, "--undo", help="Undo a label event by its id."),
    export: Optional[Path] = typer.Option(None, help="Write a corrected train.csv (competition format)."),
    suspects: Optional[str] = typer.Option(None, help="Rank label suspects: a run, an ensemble (its out-of-fold probabilities), 'latest' or an oof .npz, ranked together with the face prior (see --evidence); or 'prior': before any training, the face networks and the copy check."),
    evidence: str = typer.Option("combined", help="With --suspects: combined (probabilities + face prior, one ranking), model (probabilities alone) or prior."),
    top: int = typer.Option(20, min=1, help="With --suspects: how many people to list."),
    field: Optional[str] = typer.Option(None, help="With --suspects: rank by one field's evidence alone (gender, age or mask), e.g. one reviewer per field."),
    include_reviewed: bool = typer.Option(False, help="With --suspects: also list people a reviewer settled (accept, fix, bad) since their labels last changed."),
) -> None:
    """Change labels (every change recorded with who, why and when); show history, undo, bulk-apply, export."""
    from ..catalog import relabel as lib

    catalog = state(ctx).catalog
    if suspects:
        _print_suspects(catalog, suspects, top, evidence, field, include_reviewed)
        return
    if field is not None:
        raise InvalidInput("--field ranks label suspects: give it with --suspects")
    if include_reviewed:
        raise InvalidInput("--include-reviewed goes with --suspects")
    single = [x is not None for x in (gender, age, age_band, race)]
    modes = sum([any(single) or image is not None or mask is not None, swap is not None, from_csv is not None,
                 known_fixes, show_history, undo_event is not None, export is not None])
    if modes == 0:
        raise InvalidInput("nothing to do: give a fix (--gender/--age/--age-band/--race, --image with --mask, --swap), "
                           "--from-csv, --known-fixes, --history, --undo or --export")
    if modes > 1:
        raise InvalidInput("give one kind of action at a time (a fix, --swap, --from-csv, --known-fixes, --history, "
                           "--undo or --export)")

    if show_history:
        _print_history(lib.history(catalog, person))
        return
    if export is not None:
        n = lib.export_train_csv(catalog, export)
        console.print(f"wrote {export}: {n:,} people with their current labels")
        return
    if undo_event is not None:
        event = lib.undo(catalog, undo_event, actor=by, reason=reason)
        console.print(f"undid event {undo_event}: {event.field} back to {event.new_value!r} (event {event.id})")
        return
    if from_csv is not None or known_fixes:
        result = (lib.relabel_from_csv(catalog, from_csv, actor=by, reason=reason) if from_csv is not None
                  else lib.apply_known_fixes(catalog, include_less_agreed=less_agreed, actor=by))
        _print_events(result.events, "applied")
        console.print(f"{len(result.events)} change(s) written, {len(result.unchanged)} already as asked")
        if result.skipped:
            console.print(f"[yellow]skipped[/] {len(result.skipped)} id(s) not in this catalog: {', '.join(result.skipped)}",
                          highlight=False)
        return

    fixes = []
    if swap is not None:
        ident, a, b = swap
        fixes.append((ident, "swap", f"{a}/{b}", None))
    if image is not None or mask is not None:
        if image is None or mask is None:
            raise InvalidInput("--image ID:KIND and --mask STATE go together")
        ident, kind = lib.parse_image_ref(image)
        fixes.append((ident, "mask", mask, kind))
    for field, value in (("gender", gender), ("age", age), ("age_band", age_band), ("race", race)):
        if value is not None:
            if person is None:
                raise InvalidInput(f"--{field.replace('_', '-')} needs the PERSON argument")
            fixes.append((person, field, value, None))
    events, unchanged = lib.relabel_many(catalog, fixes, actor=by, reason=reason, source="cli")
    _print_events(events, "changed")
    for change in unchanged:
        console.print(f"{change.label}: {change.field} is already {_show(change.field, change.new_value)}")


def _show(field: str, value: str) -> str:
    return labels.MASK_STATES[int(value)] if field == "mask" else value


def _print_events(events, verb: str) -> None:
    for e in events:
        console.print(f"event {e.id}: {verb} {e.field} {_show(e.field, e.old_value)!r} -> {_show(e.field, e.new_value)!r}"
                      f" (profile {e.profile_id}{'' if e.image_id is None else f', image {e.image_id}'})", highlight=False)


def _print_history(rows) -> None:
    table = Table(title=f"label history ({len(rows)} events)")
    for col in ("event", "person", "image", "field", "from", "to", "by", "source", "when", "reason", "undo"):
        table.add_column(col)
    for r in rows:
        undo = f"undoes {r['undoes']}" if r["undoes"] else (f"undone by {r['undone_by']}" if r["undone_by"] else "")
        table.add_row(str(r["id"]), r["folder"], r["image"] or "", r["field"], _show(r["field"], r["old"]),
                      _show(r["field"], r["new"]), r["actor"], r["source"], r["at"].strftime("%Y-%m-%d %H:%M:%S"),
                      r["reason"] or "", undo)
    console.print(table)


def _print_suspects(catalog, ref: str, top: int, evidence: str = "combined", field: str | None = None,
                    include_reviewed: bool = False) -> None:
    from ..evaluate.suspects import EVIDENCE_ROWS, before_training, suspects

    left_out = settled_left_out(catalog, include_reviewed)
    with progress_bar("suspects") as progress:
        rows = suspects(catalog, ref, top, progress, evidence=evidence, field=field, leave_out=left_out)
    if before_training(ref, evidence):
        title = "the face networks before training (unmasked photos) and copied photos"
    elif evidence == "model":
        title = f"{ref}'s out-of-sample probabilities"
    else:
        title = f"{ref}'s out-of-sample probabilities and the face networks"
    combined = bool(rows) and rows[0].get("source") in EVIDENCE_ROWS
    if field:
        title += f", {field} alone"
    table = Table(title=f"label suspects from {title} (" + ("most evidence against the label first)" if combined
                                                         else "lowest label probability first)"))
    columns = (("#", "person", "folder", "suspect field", "score", "labels", "evidence") if combined else
               ("#", "person", "folder", "suspect field", "score", "labels", "predicted", "worst mask image"))
    for col in columns:
        table.add_column(col)
    for n, r in enumerate(rows, 1):
        if combined:
            table.add_row(str(n), r["person"], r["folder"], r["field"], f"{r['score']:.2f}",
                          f"{r['gender']}, {r['age']}", r["evidence"])
            continue
        table.add_row(str(n), r["person"], r["folder"], r["field"], f"{r['score']:.2g}",
                      f"{r['gender']}, {r['age']}", f"{r['predicted_gender']}, {r['predicted_band']}",
                      f"{r['mask_image']} ({r['mask_score']:.2f})" if r["mask_score"] is not None else "-")
    console.print(table)
    if rows and rows[0].get("missing_evidence"):
        console.print(rows[0]["missing_evidence"], highlight=False)
    print_left_out(left_out)
    more = ("" if evidence == "combined" else f" --evidence {evidence}") + (f" --field {field}" if field else "")
    console.print(f"review them in order: maskkit audit --queue suspects --run {ref}{more}", highlight=False)
