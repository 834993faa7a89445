"""`maskkit eval`, `ensemble`, `submit`, `predict`, `export`: from runs to a validated submission."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import labels
from ..errors import InvalidInput, NotFound
from ._app import app, check_device, check_tta, check_vote, console, output_dir_option, output_file_option, print_blend, \
    progress_bar, state


def _metrics_line(m: dict) -> str:
    line = (f"accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  |  mask F1 {m['mask_f1']:.4f}  gender F1 "
            f"{m['gender_f1']:.4f}  age F1 {m['age_f1']:.4f}  |  age F1 by mask: wear {m['age_f1_wear']:.3f}, "
            f"incorrect {m['age_f1_incorrect']:.3f}, none {m['age_f1_not_wear']:.3f}")
    present = m.get("classes_present", labels.NUM_CLASSES)
    if present < labels.NUM_CLASSES:
        line += (f"\nnote: {labels.NUM_CLASSES - present} of the {labels.NUM_CLASSES} classes have no images here; "
                 f"macro F1 is over all 18 (absent classes count 0); over the {present} present: "
                 f"{m['macro_f1_present']:.4f}")
    return line


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    names: Optional[List[str]] = typer.Argument(None, help="Run or ensemble name (several with --compare; default: "
                                                         "the latest finished run or ensemble)."),
    view: Optional[str] = typer.Option(None, help="Evaluate on all images of this view (default: the run's validation fold)."),
    per_class: bool = typer.Option(False, "--per-class", help="F1 and support for all 18 classes, confusion matrix."),
    cam: int = typer.Option(0, min=0, help="Grad-CAM overlays for N validation images into a PNG sheet."),
    tta: Optional[str] = typer.Option(None, help="Test-time augmentation: hflip.", callback=check_tta),
    compare: bool = typer.Option(False, "--compare", help="Put several runs/ensembles side by side."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable results."),
) -> None:
    """Accuracy, macro F1, per-label and per-class F1, confusions, Grad-CAM; recorded with the run."""
    from ..evaluate.report import compare as compare_runs, gradcam_sheet, run_eval

    catalog = state(ctx).catalog
    names = names or [_or_latest(ctx, None, "evaluating")]
    if compare or len(names) > 1:
        rows = compare_runs(catalog, names)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title="comparison")
        for col in ("run", "images", "accuracy", "macro F1", "mask F1", "gender F1", "age F1"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(r["source"], f"{r['images']:,}", f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                          f"{r['mask_f1']:.4f}", f"{r['gender_f1']:.4f}", f"{r['age_f1']:.4f}")
        console.print(table)
        return
    name = names[0]
    with progress_bar("eval") as progress:
        r = run_eval(catalog, name, view=view, tta=tta, device=device, progress=progress)
    if as_json:
        typer.echo(json.dumps(r.public(), indent=2))
    else:
        console.print(f"[bold]{name}[/] on {r.on} ({r.images:,} images)", highlight=False)
        console.print(_metrics_line(r.metrics), highlight=False)
        if per_class:
            table = Table(title="per class")
            for col in ("class", "name", "F1", "support"):
                table.add_column(col, justify="right")
            for c in range(labels.NUM_CLASSES):
                table.add_row(str(c), labels.class_name(c), f"{r.metrics['class_f1'][c]:.3f}",
                              str(r.metrics["support"][c]))
            console.print(table)
            cm = Table(title="confusion matrix (rows true, columns predicted)", box=None)
            cm.add_column("")
            for c in range(labels.NUM_CLASSES):
                cm.add_column(str(c), justify="right")
            for t in range(labels.NUM_CLASSES):
                cm.add_row(str(t), *(str(v) if v else "." for v in r.confusion[t]))
            console.print(cm)
        for w in r.worst:
            console.print(f"  {w['count']:>4} x true {w['true']} {w['true_name']} -> predicted {w['pred']} "
                          f"{w['pred_name']}   e.g. images {', '.join(map(str, w['examples']))}", highlight=False)
        console.print(f"confusion matrix PNG: {r.confusion_png}", highlight=False)
    if cam:
        out = Path(r.confusion_png).with_name(f"gradcam_{name}.png")
        console.print(f"Grad-CAM sheet: {gradcam_sheet(catalog, name, cam, out, device)}", highlight=False)


@app.command()
def ensemble(
    ctx: typer.Context,
    runs: List[str] = typer.Argument(..., help="Runs to combine, or k-fold ensembles (train --folds K) to blend."),
    name: Optional[str] = typer.Option(None, help="Ensemble name (default ens-<runs>)."),
    weights: Optional[str] = typer.Option(None, help="Comma-separated weights, one per run (k-fold ensembles: tuned "
                                                     "out-of-fold when not given)."),
    vote: str = typer.Option("soft", help="soft (mean probabilities) or hard (majority).", callback=check_vote),
    tta: Optional[str] = typer.Option(None, help="hflip: average with the horizontally flipped image.",
                                      callback=check_tta),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
    offsets: Optional[str] = typer.Option(None, help="k-fold ensembles: the decision offsets to tune, classes | fields | "
                                                     "none (as train.offsets; default: as the members tuned theirs)."),
) -> None:
    """Vote runs together, evaluate on the validation people they share, record it for eval and submit."""
    from ..evaluate.report import make_ensemble

    w = None
    if weights:
        try:
            w = [float(v) for v in weights.split(",")]
        except ValueError:
            raise InvalidInput(f"--weights must be numbers, got {weights!r}") from None
        if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
            raise InvalidInput(f"--weights must be finite, non-negative and not all zero, got {weights!r}")
    name = name or "ens-" + "-".join(runs)
    from ..evaluate.blend import blend, kfold_ensembles

    from ..train.schema import OFFSET_KINDS

    if offsets is not None and offsets not in OFFSET_KINDS:
        raise InvalidInput(f"--offsets must be one of {', '.join(OFFSET_KINDS)}, got {offsets!r}")
    members = kfold_ensembles(state(ctx).catalog, runs)
    if members is None and offsets is not None:
        raise InvalidInput("--offsets is for blending k-fold ensembles (train --folds K); runs keep their own decisions")
    if members is not None:  # k-fold ensembles: weights and decisions tuned on their out-of-fold predictions
        if vote != "soft" or tta:
            raise InvalidInput("k-fold ensembles blend by soft vote without TTA (their decisions were tuned so)")
        r = blend(state(ctx).catalog, name, members, weights=w, offsets=offsets)
        print_blend(name, r.weights, r.members_oof, r.oof_raw, r.oof, r.decision, weights_tuned=w is None, runs=r.runs)
        return
    with progress_bar("ensemble") as progress:
        r = make_ensemble(state(ctx).catalog, name, runs, weights=w, vote=vote, tta=tta, device=device, progress=progress)
    if r.metrics is None:
        console.print(f"ensemble [bold]{name}[/] recorded; its runs share no validation people, so it is not "
                      f"evaluated here (maskkit eval {name} --view HELD_OUT_VIEW, or submit --score)", highlight=False)
        return
    console.print(f"ensemble [bold]{name}[/] on {r.on} ({r.images:,} images)", highlight=False)
    console.print(_metrics_line(r.metrics), highlight=False)


@app.command()
def submit(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="Run or ensemble (default: the latest finished one)."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval", help="Eval folder (info.csv + images/); default: the catalog's."),
    out: Optional[Path] = typer.Option(None, help="Submission file (default submission_<name>.csv beside the runs).",
                                       callback=output_file_option),
    score_file: Optional[Path] = typer.Option(None, "--score", help="answers.csv to score the submission against."),
    tta: Optional[str] = typer.Option(None, help="hflip test-time augmentation.", callback=check_tta),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
) -> None:
    """Predict every eval image (same preprocessing as training), write and validate ImageID,ans, record it."""
    from ..evaluate.submission import submit as do_submit

    if eval_dir is not None and not (eval_dir / "info.csv").is_file():
        raise NotFound(f"{eval_dir / 'info.csv'}: file not found (an eval folder holds info.csv and images/)")
    name = _or_latest(ctx, name, "submitting")
    with progress_bar("submit") as progress:
        r = do_submit(state(ctx).catalog, name, eval_dir=eval_dir, out=out, answers=score_file, device=device, tta=tta,
                      progress=progress)
    console.print(f"wrote {r.file}: {r.rows:,} rows, validated against info.csv; sha256 {r.sha256[:16]}",
                  highlight=False)
    if r.people is not None:
        console.print(f"people: the photos grouped into {r.people:,} people of 2+ photos, each deciding gender and age "
                      "from its least-masked photo (train.pool_people)", highlight=False)
    if r.scores:
        s = r.scores
        console.print(f"score: accuracy {s['accuracy']:.4f}, macro F1 {s['macro_f1']:.4f} ({s['images']:,} images)")


@app.command()
def predict(
    ctx: typer.Context,
    photos: List[Path] = typer.Argument(..., help="Photos with any number of people."),
    run: Optional[str] = typer.Option(None, help="Run or ensemble (default: the latest finished one)."),
    out: Optional[Path] = typer.Option(None, help="Folder for annotated copies.", callback=output_dir_option),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N.", callback=check_device),
) -> None:
    """Find every face in any photo and tell mask / gender / age, with boxes drawn."""
    from ..evaluate.photos import predict_photos

    results = predict_photos(state(ctx).catalog, _or_latest(ctx, run, "predicting with"), [str(p) for p in photos],
                             out, device)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        console.print(f"{r['photo']}: {len(r['faces'])} face(s)" + (f" -> {r['output']}" if "output" in r else ""),
                      highlight=False)
        for f in r["faces"]:
            console.print(f"  {f['mask']} / {f['gender']} / {f['age_band']} ({f['confidence']:.0%}) at {f['box']}",
                          highlight=False)


@app.command()
def export(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="Run to export."),
    onnx: Path = typer.Option(..., help="ONNX file to write."),
) -> None:
    """Export a run's model to ONNX, checked against PyTorch with onnxruntime."""
    from ..evaluate.export import export_onnx

    r = export_onnx(state(ctx).catalog, run, onnx)
    console.print(f"wrote {r.file} (input N x 3 x {r.input_size} x {r.input_size}); onnxruntime vs PyTorch: "
                  f"max |diff| {r.max_abs_diff:.1e}", highlight=False)


def _or_latest(ctx: typer.Context, name: Optional[str], doing: str) -> str:
    """The run or ensemble named, else the latest finished one (said on the terminal)."""
    if name:
        return name
    from ..evaluate.experiments import latest_source

    name = latest_source(state(ctx).catalog)
    console.print(f"{doing} the latest: [bold]{name}[/]", highlight=False)
    return name
