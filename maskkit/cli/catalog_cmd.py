"""`maskkit catalog info | upgrade | move-root`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._app import app, console, state

catalog_app = typer.Typer(help="Inspect and maintain the catalog itself.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("info")
def info(ctx: typer.Context) -> None:
    """Where the catalog is, its schema revision, data roots and row counts."""
    from ..catalog.engine import catalog_summary

    summary = catalog_summary(state(ctx).catalog)
    table = Table(title="catalog", show_header=False)
    table.add_row("url", summary["url"])
    table.add_row("schema revision", f"{summary['revision']} (latest {summary['head']})")
    console.print(table)
    roots = Table(title="data roots")
    for col in ("id", "name", "path", "exists"):
        roots.add_column(col)
    for root in summary["roots"]:
        roots.add_row(str(root["id"]), root["name"], root["path"], "yes" if root["exists"] else "[red]no[/]")
    counts = Table(title="rows")
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for name, n in summary["rows"].items():
        counts.add_row(name, f"{n:,}")
    console.print(roots)
    console.print(counts)


@catalog_app.command("upgrade")
def upgrade_cmd(ctx: typer.Context) -> None:
    """Bring the catalog to the latest schema (every command also does this on its own); makes a new, empty
    catalog when there is none."""
    catalog = state(ctx).open(create=True)  # opening upgrades (a new catalog starts at the latest schema)
    console.print(f"catalog {catalog.url} is at schema revision {catalog.revision()}")


@catalog_app.command("move-root")
def move_root(ctx: typer.Context, name_or_path: str = typer.Argument(..., help="Root name or its old path."),
              new_path: Path = typer.Argument(..., help="Where the folder is now.")) -> None:
    """Point a data root at the folder's new place (image paths are stored relative to it)."""
    from ..catalog.roots import move_root as do_move

    old, new = do_move(state(ctx).catalog, name_or_path, new_path)
    console.print(f"data root moved: {old} -> {new}")


@catalog_app.command("copy")
def copy_cmd(src: str = typer.Argument(..., help="Source catalog (file or URL)."),
             dst: str = typer.Argument(..., help="Destination catalog (file or URL), empty.")) -> None:
    """Copy a whole catalog, row for row (e.g. SQLite -> PostgreSQL and back); then compare them."""
    from ..catalog.copy import compare_catalogs, copy_catalog
    from ._app import progress_bar

    notes: list[str] = []
    with progress_bar("copy") as progress:
        copied = copy_catalog(src, dst, progress, notes)
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print("copied " + ", ".join(f"{name} {n:,}" for name, n in copied.items() if n), highlight=False)
    problems = compare_catalogs(src, dst)
    if problems:
        from ..errors import MaskkitError

        raise MaskkitError("the copy differs from the source: " + "; ".join(problems))
    console.print("[green]verified[/]: every table is identical, row for row")
