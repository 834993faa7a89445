"""`maskkit runs [--json]`: the experiment table."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ._app import app, console, state


@app.command()
def runs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
         last: int = typer.Option(0, min=0, help="Only the newest N rows (0: all).")) -> None:
    """The experiment table: runs and ensembles, view and hash, split/fold, config changes, the kept epoch (best.pt:
    the last one by default, else the one train.metric picked) and its train.metric, out-of-fold F1, submission
    scores, wall time."""
    from ..evaluate.experiments import experiments

    rows = experiments(state(ctx).catalog)
    rows = rows[-last:] if last > 0 else rows
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=1, default=str))
        return
    table = Table(title="runs and ensembles (oldest first)")
    for col in ("name", "kind", "view@hash", "split/fold", "config changes", "status", "kept", "OOF F1", "submitted",
                "time"):
        table.add_column(col)
    for r in rows:
        best = f"{r.best_metric:.4f} (ep {r.best_epoch})" if r.best_metric is not None and r.best_epoch else \
            (f"{r.best_metric:.4f}" if r.best_metric is not None else "-")
        scored = [s["scores"]["macro_f1"] for s in r.submissions if s.get("scores")]
        table.add_row(r.name, r.kind if r.kind == "run" else f"ensemble of {len(r.members)}",
                      f"{r.view or '-'}@{r.view_hash or '-'}",
                      f"{r.split or '-'}" + (f"/{r.fold}" if r.fold is not None else ""),
                      " ".join(f"{k}={v}" for k, v in r.changed.items()) or "default",
                      r.status, best,
                      f"{r.oof_macro_f1:.4f}" if r.oof_macro_f1 is not None else "-",
                      (f"F1 {scored[-1]:.4f}" if scored else str(len(r.submissions))) if r.submissions else "-",
                      f"{r.seconds:.0f} s" if r.seconds else "-")
    console.print(table)
    for r in rows:
        if r.status != "interrupted":
            continue
        if r.resumable:
            again = " (or run the same train --folds command again: it resumes this fold and reuses finished ones)" \
                if r.fold is not None and r.split and "fold" in r.split else ""
            console.print(f"run {r.name} was interrupted: continue it with maskkit train --resume {r.name}{again}",
                          highlight=False)
        else:
            console.print(f"run {r.name} was interrupted before its first epoch ended (nothing to resume): run the "
                          "same train command again", highlight=False)
