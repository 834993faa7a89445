"""`maskkit split NAME`: leak-free profile-level splits of a view (identities kept together), and --check."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from ..errors import InvalidInput
from ._app import app, console, state


@app.command()
def split(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Split name."),
    view: Optional[str] = typer.Option(None, help="The view whose people are split."),
    folds: Optional[int] = typer.Option(None, help="k-fold: number of folds."),
    val: Optional[float] = typer.Option(None, help="Holdout: validation fraction of people."),
    seed: int = typer.Option(0, help="Random seed (recorded)."),
    like: Optional[str] = typer.Option(None, help="Copy another split's assignment: every person (or their real "
                                       "ancestor) in the same fold, e.g. for a balanced view of the same people."),
    replace: bool = typer.Option(False, help="Make an existing split again."),
    check: bool = typer.Option(False, help="Prove no person is on both sides; class balance per fold."),
    as_json: bool = typer.Option(False, "--json", help="With --check: machine-readable."),
) -> None:
    """Profile-level, stratified (gender x age band) holdout or k-fold splits of a view."""
    from ..datasets.splits import check_split, make_split

    catalog = state(ctx).catalog
    if not check:
        if view is None:
            raise InvalidInput("--view VIEW is needed to make a split")
        s = make_split(catalog, name, view, folds=folds, val=val, seed=seed, replace=replace, like=like)
        console.print(f"split [bold]{name}[/]: {s.kind}, {s.folds} folds, seed {s.seed}, view {view}", highlight=False)
    result = check_split(catalog, name)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        if result.leaks:
            raise typer.Exit(1)
        return
    table = Table(title=f"split {name} ({result.kind}, view {result.view})")
    for col in ("fold", "people", "synthetic", "images", "young", "middle", "old", "male", "female"):
        table.add_column(col, justify="right")
    for k, f in result.per_fold.items():
        label = str(k) if result.kind == "kfold" else ("train" if k == 0 else "val")
        table.add_row(label, f"{f['people']:,}", f"{f['synthetic_people']:,}", f"{f['images']:,}",
                      *(f"{n:,}" for n in f["people_by_band"]), *(f"{n:,}" for n in f["people_by_gender"]))
    console.print(table)
    if result.leaks:
        for line in result.leaks:
            console.print(f"[red]leak:[/] {line}", highlight=False)
        raise typer.Exit(1)
    console.print("[green]no leakage[/]: every person, and every synthetic person's real ancestor, is on one side only; "
                  f"by content, none of the {result.content_checked:,} photos appears in two folds", highlight=False)
