"""`maskkit ablate --view V [key=value ...]`: the imbalance remedies side by side on one fixed holdout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._app import app, check_device, console, progress_bar, runs_dir_option, state


@app.command()
def ablate(
    ctx: typer.Context,
    overrides: Optional[List[str]] = typer.Argument(None, help="Training config overrides key=value for every remedy "
                                                    "(after the fast defaults model.prior=none data.image_size=160)."),
    view: str = typer.Option(..., help="The dataset view whose real people are ablated on (e.g. a crop view)."),
    remedies: Optional[str] = typer.Option(None, help="Comma-separated subset (default all): none, weighted-sampler, "
                                           "class-weights, focal, logit-adjust, stage1-remask, stage1-aged, exclude-57-59."),
    seed: int = typer.Option(0, help="Seeds the holdout, the synthetic people and training."),
    val: float = typer.Option(0.2, help="Held-out fraction of people."),
    synthetic_cap: Optional[int] = typer.Option(None, help="At most this many synthetic people per band and kind "
                                                "(default: top every band up to the largest)."),
    age_backend: Optional[str] = typer.Option(None, help="For stage1-aged: prototype (built in, default) or module:factory."),
    age_checkpoint: Optional[str] = typer.Option(None, help="Checkpoint file for the age model."),
    age_strength: Optional[float] = typer.Option(None, help="Built-in prototype backend: strength (default 2)."),
    config: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML config (keys: maskkit train --keys)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go.", callback=runs_dir_option),
    out: Optional[Path] = typer.Option(None, help="Folder for ablation.csv/.json/.png (default RUNS/ablate-VIEW-sSEED, plus -A+B for a subset of remedies)."),
    device: str = typer.Option("cpu", help="Device for detection and generation (training: train.device).",
                               callback=check_device),
) -> None:
    """Train the same model under each imbalance remedy and score all on the same held-out people."""
    from ..evaluate.ablation import ablate as run_ablation

    catalog = state(ctx).catalog
    names = [r.strip() for r in remedies.split(",") if r.strip()] if remedies is not None else None
    with progress_bar("ablate") as progress:
        result = run_ablation(catalog, view, remedies=names, seed=seed, val=val, config_file=config,
                              overrides=overrides, runs_dir=runs_dir, out_dir=out, synthetic_cap=synthetic_cap,
                              age_backend=age_backend, age_checkpoint=age_checkpoint, age_strength=age_strength,
                              device=device, progress=progress, log=lambda m: console.print(m, highlight=False))
    table = Table(title=f"imbalance remedies on {result.view}: {result.holdout_people:,} held-out people "
                        f"({result.holdout_images:,} images), split {result.split}")
    first = result.rows[0].remedy if result.rows else "none"
    for col in ("remedy", "macro F1 [95%]", f"gain vs {first} [95%]", "young F1", "middle F1", "old F1",
                "old recall", "train images", "synthetic", "seconds", "run"):
        table.add_column(col, justify="left" if col in ("remedy", "run") else "right")
    best = result.best().remedy
    for r in result.rows:
        style = "bold green" if r.remedy == best else None
        table.add_row(r.remedy, f"{r.macro_f1:.4f} [{r.macro_f1_low:.3f}, {r.macro_f1_high:.3f}]",
                      f"{r.gain:+.4f} [{r.gain_low:+.3f}, {r.gain_high:+.3f}]", f"{r.young_f1:.3f}", f"{r.middle_f1:.3f}", f"{r.old_f1:.3f}",
                      f"{r.old_recall:.3f}", f"{r.train_images:,}", f"{r.synthetic_people:,}", f"{r.seconds:.0f}",
                      r.run + (" (reused)" if r.reused else ""), style=style)
    console.print(table)
    console.print("intervals: held-out people resampled with replacement, the same resamples for every remedy; a gain "
                  "whose interval holds 0 is not told apart from noise on this holdout", highlight=False)
    console.print(f"table: {result.csv}\nchart: {result.chart}\nsummary: {result.json}\nwall time {result.seconds:.0f} s",
                  highlight=False)
