"""`maskkit demo [DIR]`: the whole pipeline, end to end, on a small dataset made from nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, console


def _run(args: list[str]) -> None:
    """Run a maskkit command exactly as a user would type it."""
    from typer.main import get_command

    console.rule(f"[bold]maskkit {' '.join(args[2:])}")
    get_command(app).main(args, prog_name="maskkit", standalone_mode=False)


@app.command()
def demo(
    directory: Path = typer.Argument(Path("demo"), help="Folder for the dataset, its catalog and runs."),
    people: int = typer.Option(24, min=9, help="People in the train set (7 images each)."),
    seed: int = typer.Option(0, help="Random seed of the dataset."),
    epochs: int = typer.Option(2, min=1, help="Training epochs per run."),
    backbone: str = typer.Option("efficientnet_lite0", help="timm backbone (packaged ImageNet weights for Lite0)."),
    image_size: int = typer.Option(96, help="Training image size."),
    faces: str = typer.Option("photo", help="photo: people made from a real photo (MTCNN finds them); drawn: cartoons."),
    stats_only: bool = typer.Option(False, help="Only make the dataset, ingest it and show stats."),
    recipe: str = typer.Option("auto", help="train.recipe: auto (finetune on a GPU, features on the CPU), features "
                                            "or finetune; the train step prints which one runs and why."),
) -> None:
    """Build a small dataset in the competition layout and run ingest, relabel (incl. face-prior suspects),
    preprocess, generate, group,
    split, train, eval, ensemble and submit on it; prints where every output is."""
    from ..demo_data import make_dataset

    directory = directory.expanduser().resolve()
    made = make_dataset(directory / "data", people=people, seed=seed, faces=faces)
    console.print(f"[bold]dataset[/]: {made['people']} people in {made['train']}, {made['eval_images']} eval images "
                  f"in {made['eval']}", highlight=False)
    catalog = directory / "catalog.db"
    runs = directory / "runs"
    base = ["--catalog", str(catalog)]
    _run(base + ["ingest", str(made["train"]), "--eval", str(made["eval"])])
    _run(base + ["stats", "--plot", str(directory / "plots")])
    if stats_only:
        console.print(f"\nnext: maskkit --catalog {catalog} stats --json", highlight=False)
        return
    first = sorted(p.name for p in (made["train"] / "images").iterdir())[1].split("_")[0]
    _run(base + ["relabel", "--known-fixes"])
    _run(base + ["relabel", first, "--age", "31", "--reason", "demo: looks older than the label"])
    _run(base + ["preprocess", "crop", "--target", "all", "--min-face", "40"])
    # synthetic people to double every age band (stage2), then their face crops, then the view on crops
    _run(base + ["group", "demo-original", "--balance", "stage2", "--generate", "--seed", str(seed)])
    _run(base + ["preprocess", "crop", "--min-face", "40"])
    _run(base + ["group", "demo", "--variant", "crop", "--balance", "stage2", "--seed", str(seed)])
    # zero-shot label suspects from the face prior, before any training
    _run(base + ["relabel", "--suspects", "prior", "--top", "5"])
    # the default recipe (train.recipe=auto: frozen backbone + face prior features on a CPU, the whole network
    # fine-tuned with the face prior on a GPU), K folds in one command -> one ensemble whose decision offsets are
    # tuned out-of-fold (kept only when they also help held-out people)
    overrides = [f"model.backbone={backbone}", f"data.image_size={image_size}", f"schedule.epochs={epochs}",
                 "data.workers=0", f"train.recipe={recipe}"]
    if backbone.startswith("test_"):
        overrides.append("model.pretrained=none")
    _run(base + ["train", "--view", "demo", "--folds", "2", "--name", "demo-ensemble", "--runs-dir", str(runs),
                 *overrides])
    _run(base + ["eval", "--per-class"])  # the latest: the k-fold ensemble, on its out-of-fold predictions
    submission = runs / "submission_demo.csv"
    _run(base + ["submit", "--out", str(submission), "--score", str(made["eval"] / "answers.csv")])
    _run(base + ["runs"])
    console.rule("[bold]where everything is")
    for what, where in (("dataset", made["train"].parent), ("catalog", catalog), ("plots", directory / "plots"),
                        ("face crops", directory / "data" / "variants" / "crop"),
                        ("synthetic people", directory / "data" / "synthetic"),
                        ("runs", runs), ("submission", submission)):
        console.print(f"  {what:<17}{where}", highlight=False)
