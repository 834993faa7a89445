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
    from sqlalchemy import func, select

    from ..catalog.engine import head_revision
    from ..catalog.models import DataRoot
    from sqlmodel import SQLModel

    catalog = state(ctx).catalog
    table = Table(title="catalog", show_header=False)
    table.add_row("url", catalog.url)
    table.add_row("schema revision", f"{catalog.revision()} (latest {head_revision()})")
    console.print(table)
    roots = Table(title="data roots")
    for col in ("id", "name", "path", "exists"):
        roots.add_column(col)
    with catalog.session() as session:
        for root in session.execute(select(DataRoot).order_by(DataRoot.id)).scalars():
            roots.add_row(str(root.id), root.name, root.path, "yes" if Path(root.path).is_dir() else "[red]no[/]")
        counts = Table(title="rows")
        counts.add_column("table")
        counts.add_column("rows", justify="right")
        for name, tbl in sorted(SQLModel.metadata.tables.items()):
            counts.add_row(name, f"{session.execute(select(func.count()).select_from(tbl)).scalar_one():,}")
    console.print(roots)
    console.print(counts)


@catalog_app.command("upgrade")
def upgrade_cmd(ctx: typer.Context) -> None:
    """Bring the catalog to the latest schema (every command also does this on its own)."""
    catalog = state(ctx).catalog  # opening upgrades
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

    with progress_bar("copy") as progress:
        copied = copy_catalog(src, dst, progress)
    console.print("copied " + ", ".join(f"{name} {n:,}" for name, n in copied.items() if n), highlight=False)
    problems = compare_catalogs(src, dst)
    if problems:
        from ..errors import MaskkitError

        raise MaskkitError("the copy differs from the source: " + "; ".join(problems))
    console.print("[green]verified[/]: every table is identical, row for row")
