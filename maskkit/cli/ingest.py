"""`maskkit ingest TRAIN_DIR [--eval EVAL_DIR]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import app, console, progress_bar, state

PROBLEM_LINES_SHOWN = 25


@app.command()
def ingest(
    ctx: typer.Context,
    train_dir: Optional[Path] = typer.Argument(None, help="Folder holding train.csv and images/."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", help="Eval folder holding info.csv and images/."),
    prefer: str = typer.Option("csv", help="When a folder name and its train.csv row disagree: 'csv' or 'folder'."),
    verify: str = typer.Option("fast", help="'fast': header + end-of-file checks; 'full': also decode every image."),
    workers: Optional[int] = typer.Option(None, help="Reader processes for big batches (default: one per core)."),
    show_all: bool = typer.Option(False, "--all-problems", help="List every problem found, not the first few."),
) -> None:
    """Read a dataset in the competition layout into the catalog (idempotent; re-runs skip unchanged files)."""
    from ..catalog.ingest import ingest_eval, ingest_train
    from ..errors import InvalidInput, NotFound

    if train_dir is None and eval_dir is None:
        raise InvalidInput("give a train folder, --eval EVAL_DIR, or both")
    if prefer not in ("csv", "folder"):
        raise InvalidInput(f"--prefer must be 'csv' or 'folder', got {prefer!r}")
    if verify not in ("fast", "full"):
        raise InvalidInput(f"--verify must be 'fast' or 'full', got {verify!r}")
    from pathlib import Path

    for folder, must in ((train_dir, "train.csv"), (eval_dir, "info.csv")):  # both checked before either is read
        if folder is not None:
            folder = Path(folder).expanduser()
            if not folder.is_dir():
                raise NotFound(f"{folder}: " + ("not a folder" if folder.exists() else "folder not found"))
            if not (folder / must).is_file():
                raise NotFound(f"{folder / must}: file not found (a {'train' if must == 'train.csv' else 'eval'} "
                                   f"folder holds {must} and images/)")
    catalog = state(ctx).open(create=True)  # ingest makes the catalog on first use
    reports = []
    if train_dir is not None:
        with progress_bar("train") as progress:
            reports.append(ingest_train(catalog, train_dir, prefer=prefer, full_decode=verify == "full",
                                        workers=workers, progress=progress))
    if eval_dir is not None:
        with progress_bar("eval") as progress:
            reports.append(ingest_eval(catalog, eval_dir, full_decode=verify == "full", workers=workers,
                                       progress=progress))
    for report in reports:
        _print_report(report, show_all)


def _print_report(report, show_all: bool) -> None:
    table = Table(title=f"ingest {report.kind}: {report.root}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    if report.kind == "train":
        rows = [
            ("profiles added", report.profiles_added),
            ("profiles already in catalog", report.profiles_known),
            ("images added", report.images_added),
            ("images unchanged (skipped)", report.images_unchanged),
            ("images changed", len(report.images_changed)),
            ("images touched (same content)", report.images_touched),
            ("images gone from disk", len(report.images_missing)),
            ("damaged images", len(report.damaged)),
            ("junk files ignored", report.junk_files),
            ("unknown image kinds", len(report.extra_files)),
            ("people missing image kinds", len(report.missing_kinds)),
            ("folder/csv disagreements", len(report.mismatches)),
            ("ids shared by several folders", len(report.shared_ids)),
            ("people identical to catalogued people", len({f for f, *_ in report.duplicate_people})),
            ("unreadable person folders", len(report.unreadable_folders)),
            ("csv rows without folder", len(report.missing_folders)),
            ("folders without csv row", len(report.unlisted_folders)),
        ]
    else:
        rows = [
            ("rows in info.csv", report.eval_rows),
            ("eval images added", report.eval_added),
            ("eval images unchanged (skipped)", report.eval_unchanged),
            ("eval images changed", len(report.images_changed)),
            ("eval images missing", len(report.eval_missing_files)),
            ("damaged images", len(report.damaged)),
            ("junk files ignored", report.junk_files),
        ]
    for what, n in rows:
        if n or what.startswith(("profiles added", "images added", "eval images added", "rows")):
            table.add_row(what, f"{n:,}", style="yellow" if n and ("damaged" in what or "missing" in what) else None)
    console.print(table)
    from ..catalog.ingest import iter_problems

    problems = list(iter_problems(report))
    shown = problems if show_all else problems[:PROBLEM_LINES_SHOWN]
    for line in shown:
        console.print(f"  [yellow]![/] {line}", highlight=False, soft_wrap=True)
    if len(problems) > len(shown):
        console.print(f"  ... and {len(problems) - len(shown)} more (--all-problems lists them)")
    if report.nothing_new:
        console.print(f"[green]nothing new[/]: the catalog already holds everything in {report.root}")
