"""`maskkit demo [DIR]`: a small drawn dataset, ingested and counted, from nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, console


@app.command()
def demo(
    ctx: typer.Context,
    directory: Path = typer.Argument(Path("demo"), help="Folder for the dataset and its catalog."),
    people: int = typer.Option(24, min=9, help="People in the train set (7 images each)."),
    seed: int = typer.Option(0, help="Random seed of the drawn faces."),
) -> None:
    """Build a small synthetic dataset in the competition layout, ingest it into DIR/catalog.db, print stats."""
    from ..catalog import open_catalog
    from ..synthetic import make_dataset
    from ._app import State
    from .ingest import ingest as ingest_cmd
    from .stats import stats as stats_cmd

    directory = directory.expanduser().resolve()
    made = make_dataset(directory / "data", people=people, seed=seed)
    console.print(f"[bold]1. dataset[/]: {made['people']} drawn people in {made['train']}, "
                  f"{made['eval_images']} eval images in {made['eval']}")
    catalog_path = directory / "catalog.db"
    ctx.find_root().obj = State(str(catalog_path))
    console.print(f"[bold]2. ingest[/] into {catalog_path}")
    ctx.invoke(ingest_cmd, ctx=ctx, train_dir=made["train"], eval_dir=made["eval"], prefer="csv", verify="fast",
               workers=None, show_all=False)
    console.print("[bold]3. stats[/]")
    ctx.invoke(stats_cmd, ctx=ctx, as_json=False, plot=directory / "plots")
    console.print(f"\nnext: maskkit --catalog {catalog_path} stats --json")
