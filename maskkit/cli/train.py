"""`maskkit train --view V [--split S --fold K|all] [-c config.yaml] [key=value ...]`, `--resume RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import InvalidInput
from ._app import app, console, print_blend, progress_bar, runs_dir_option, state


def _epoch_table(m: dict) -> None:
    table = Table(show_header=m["epoch"] == 1 or m.get("_header", False), box=None, pad_edge=False)
    for col in ("epoch", "train loss", "val loss", "acc", "macro F1", "mask F1", "gender F1", "age F1",
                "age F1 wear/inc/none", "lr", "s", ""):
        table.add_column(col, justify="right")
    table.add_row(str(m["epoch"]), f"{m['train_loss']:.4f}", f"{m['val_loss']:.4f}", f"{m['accuracy']:.3f}",
                  f"{m['macro_f1']:.4f}", f"{m['mask_f1']:.3f}", f"{m['gender_f1']:.3f}", f"{m['age_f1']:.3f}",
                  f"{m['age_f1_wear']:.2f}/{m['age_f1_incorrect']:.2f}/{m['age_f1_not_wear']:.2f}",
                  f"{m['lr']:.2e}", f"{m['seconds']:.0f}", "[green]kept[/]" if m.get("best") else "")  # kept: best.pt written this epoch
    console.print(table)


@app.command(context_settings={"allow_extra_args": False})
def train(
    ctx: typer.Context,
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value (e.g. optim.lr=3e-4)."),
    view: Optional[str] = typer.Option(None, help="The dataset view to train on."),
    split: Optional[str] = typer.Option(None, help="Split of that view (default: a 20% holdout, made once)."),
    fold: Optional[str] = typer.Option(None, help="Validation fold K, or 'all' to train every fold (out-of-fold probabilities)."),
    folds: Optional[int] = typer.Option(None, help="K-fold in one go: make or reuse a K-fold split of the view, train every "
                                                    "fold, record the fold models as one ensemble with decisions tuned "
                                                    "out-of-fold; prints out-of-fold F1."),
    name: Optional[str] = typer.Option(None, help="The run's name (default the next serial, 0001...); with --folds the "
                                                  "ensemble's name (default SPLIT-FIRSTRUN)."),
    config: Optional[Path] = typer.Option(None, "-c", "--config", help="YAML config (keys: maskkit train --keys)."),
    resume: Optional[str] = typer.Option(None, help="Continue an interrupted run exactly."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go.", callback=runs_dir_option),
    devices: Optional[str] = typer.Option(None, help="With --folds/--fold all: train folds in parallel, one process "
                                                     "per device: GPU numbers 0,1,... (or cuda:N, cpu)."),
    allow_stale: bool = typer.Option(False, "--allow-stale", hidden=True,
                                     help="A fold of a k-fold job: read the view's snapshot even if it changed."),
    show_config: bool = typer.Option(False, help="Print the effective config and exit."),
    keys: bool = typer.Option(False, "--keys", help="List every config key: type, default, choices or range, meaning."),
) -> None:
    """Train a classifier on a catalog view; every run gets runs/<name>/ and a row in the catalog."""
    from ..train.folds import cross_validate
    from ..train.runs import resume_run, start_run
    from ..train.config import load_config

    if keys:
        from ..train.schema import KEYS

        from ..train.recipes import RULES

        table = Table(title="training config keys (set as key=value or in a YAML file with -c)")
        for col in ("key", "type", "default", "choices / range", "recipe", "meaning"):
            table.add_column(col)
        for k in KEYS:
            table.add_row(k.name, k.kind + (" or null" if k.optional else ""), str(k.default), k.describe_range(),
                          RULES[k.name][0], k.help)
        console.print(table)
        return
    if show_config:
        import yaml

        typer.echo(yaml.safe_dump(load_config(config, overrides), sort_keys=False))
        return
    from ..train.devices import parse_devices

    device_list = parse_devices(devices)
    if device_list and folds is None and fold != "all":
        raise InvalidInput("--devices spreads the folds of --folds K (or --fold all) over devices; one run uses "
                           "train.device=...")
    if not resume:
        notes: list[str] = []
        chosen = load_config(config, overrides, notes)  # a bad key stops here; keys the recipe ignores are said
        from ..train.recipes import announce

        console.print(announce(chosen), highlight=False)
        for note in notes:
            console.print(f"note: {note}", highlight=False)
        from ..train.config import blend_backbones

        extra = blend_backbones(chosen)
        if extra and folds is not None:
            console.print(f"blend: {chosen['model']['backbone']} and " + ", ".join(f"{b} at {size} px" for b, size in extra)
                          + ", each its own k-fold ensemble on one split, then blended with weights tuned out of fold "
                          "(model.blend_backbones=" + str(chosen["model"]["blend_backbones"]) + "; none for one backbone)",
                          highlight=False)
        elif folds is None and any(o.startswith("model.blend_backbones=") for o in overrides or []):
            console.print("note: model.blend_backbones acts in k-fold ensembles (train --folds K): this trains one run "
                          "of model.backbone", highlight=False)
    catalog = state(ctx).catalog
    with progress_bar("train") as progress:
        if resume:
            result = resume_run(catalog, resume, runs_dir, progress, _epoch_table)
            console.print(f"run [bold]{result.run}[/] resumed and done: kept epoch {result.best_epoch}, "
                          f"{result.best_metric:.4f}; {result.folder}", highlight=False)
            return
        if view is None:
            raise InvalidInput("--view VIEW is needed (maskkit group --list shows the views)")
        if folds is not None:
            if split is not None or fold is not None:
                raise InvalidInput("--folds K makes its own split: leave out --split and --fold")
            from ..evaluate.kfold import train_folds

            r = train_folds(catalog, view=view, folds=folds, config_file=config, overrides=overrides,
                            runs_dir=runs_dir, name=name, progress=progress, on_epoch=_epoch_table,
                            devices=device_list)
            _print_kfold(r)
            return
        if fold == "all":
            if name is not None:
                raise InvalidInput("--fold all trains several runs: --name names one (use --folds K --name NAME for a "
                                   "named ensemble)")
            if split is None:
                raise InvalidInput("--fold all needs --split (a k-fold split: maskkit split NAME --view V --folds 5)")
            out = cross_validate(catalog, view=view, split=split, config_file=config, overrides=overrides,
                                      runs_dir=runs_dir, progress=progress, on_epoch=_epoch_table,
                                      devices=device_list)
            for r in out.runs:
                console.print(f"run {r.run}: kept epoch {r.best_epoch}, {r.best_metric:.4f}", highlight=False)
            console.print(f"out-of-fold probabilities: {out.oof}", highlight=False)
            return
        try:
            k = int(fold) if fold is not None else None
        except ValueError:
            raise InvalidInput(f"--fold must be a number or 'all', got {fold!r}") from None
        result = start_run(catalog, view=view, split=split, fold=k, config_file=config, overrides=overrides,
                                runs_dir=runs_dir, progress=progress, on_epoch=_epoch_table, name=name,
                                allow_stale=allow_stale)
    console.print(f"run [bold]{result.run}[/]: kept epoch {result.best_epoch}, "
                  f"{result.best_metric:.4f}; {result.folder}", highlight=False)


def _print_kfold(r) -> None:
    if r.members:
        _print_blend(r)
        return
    table = Table(title=f"{len(r.runs)} folds of {r.split}: out-of-fold figures ({r.oof['accuracy']:.3f} accuracy raw)")
    for col in ("decision", "macro F1", "mask F1", "gender F1", "age F1", "accuracy"):
        table.add_column(col, justify="right")
    by = r.decision["offsets"]
    rows = [("argmax", r.oof)]
    if by != "none":  # the tuned row is cross-fitted: each person decided by offsets tuned on the other people
        rows.append((f"offsets by {by}" + ("" if r.decision["applied"] else " (not kept)"), r.tuned))
    for label, m in rows:
        table.add_row(label, f"{m['macro_f1']:.4f}", f"{m['mask_f1']:.3f}", f"{m['gender_f1']:.3f}", f"{m['age_f1']:.3f}",
                      f"{m['accuracy']:.3f}")
    console.print(table)
    if by == "none":
        console.print("decision: the argmax (train.offsets=none: no offsets tuned)", highlight=False)
    else:
        folds = r.decision["cross_fit"]["folds"]
        console.print(f"decision offsets by {by} {'kept' if r.decision['applied'] else 'not kept'}: each person "
                      f"decided by offsets tuned on the other people ({folds} person folds), they changed macro F1 "
                      f"by {r.decision['cross_checked_gain']:+.4f}", highlight=False)
    _print_people(r.decision)
    for run in r.runs:
        console.print(f"run {run.run}: kept epoch {run.best_epoch}, {run.best_metric:.4f}", highlight=False)
    _print_recorded(r)


def _print_people(decision: dict) -> None:
    """What train.pool_people did to the out-of-fold figure (evaluate/people.py)."""
    kept, people = "people" in decision, decision.get("people") or decision.get("people_not_kept")
    if people is None:
        return
    pooled = decision["oof_macro_f1_after"] if kept else people["oof_macro_f1_pooled"]
    alone = decision["oof_macro_f1_unpooled"] if kept else decision["oof_macro_f1_after"]
    console.print(f"people pooling {'kept' if kept else 'not kept'}: photos grouped into people (threshold "
                  f"{people['threshold']:.2f} learnt on these people, agreement {people['agreement']:.3f}), each "
                  f"group's gender and age from its least-masked photo: macro F1 {pooled:.4f} against {alone:.4f} "
                  "for every photo alone", highlight=False)


def _print_recorded(r) -> None:
    console.print(f"ensemble [bold]{r.ensemble}[/] recorded (eval and submit take its name); "
                  f"out-of-fold probabilities: {r.oof_file}", highlight=False)


def _print_blend(r) -> None:
    """Each backbone's k-fold ensemble as alone, then their blend (weights and offsets cross-fitted)."""
    for m in r.members:
        _print_kfold(m)
    print_blend(r.ensemble, dict(zip((m.ensemble for m in r.members), r.decision["blend_weights"])),
                {m.ensemble: m.tuned["macro_f1"] for m in r.members}, r.oof["macro_f1"], r.tuned["macro_f1"], r.decision,
                weights_tuned=True, runs=sum(len(m.runs) for m in r.members), labels=r.tuned)
    _print_recorded(r)
