"""The fast-step paths of fine-tuning, on the CPU (the GPU runs the same code: tests/test_gpu.py):
bf16 autocast in training and validation, channels_last, augmentation as one warp of the batch on its
device, torch.compile, the decoded cache read a batch at a time, and the precision rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import InvalidInput
from maskkit.train import accel
from maskkit.train.runs import start_run
from maskkit.train.config import complete, load_config

TINY = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
        "data.workers=0", "schedule.epochs=1", "log.tensorboard=false", "train.recipe=finetune",
        "model.head=multi", "model.prior=none"]
AUG = {"crop_scale_min": 0.8, "hflip": 0.5}


def test_precision_is_chosen_by_the_hardware_and_refused_where_it_cannot_run():
    cpu = torch.device("cpu")
    assert accel.autocast_dtype("auto", cpu) is None  # fp32 on the CPU unless asked
    assert accel.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert accel.autocast_dtype("fp32", cpu) is None
    with pytest.raises(InvalidInput, match="fp16 needs CUDA"):
        accel.autocast_dtype("fp16", cpu)
    assert not accel.grad_scaler(cpu, torch.bfloat16).is_enabled()
    assert accel.channels_last("auto", cpu, torch.nn.Conv2d(3, 3, 1)) is False
    assert accel.channels_last("on", cpu, torch.nn.Linear(3, 3)) is True
    # the key that was train.amp: old saved configs read as before, a new file is told the new name
    assert complete({"train": {"amp": False}})["train"]["precision"] == "fp32"
    assert complete({"train": {"amp": True}})["train"]["precision"] == "auto"
    with pytest.raises(InvalidInput, match="train.amp' is now train.precision"):
        load_config(None, ["train.amp=false"])
    with pytest.raises(InvalidInput, match="train.precision must be one of"):
        load_config(None, ["train.precision=fp8"])


def test_batch_augmentation_is_seeded_and_does_what_it_says():
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    a = accel.augment_geometry_batch(x, AUG, torch.Generator().manual_seed(3))
    b = accel.augment_geometry_batch(x, AUG, torch.Generator().manual_seed(3))
    c = accel.augment_geometry_batch(x, AUG, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 40, 40) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = accel.augment_geometry_batch(x, {"crop_scale_min": 1.0, "hflip": 0.0}, torch.Generator())
    assert torch.equal(same, x.float())  # nothing asked, nothing changed
    flipped = accel.augment_geometry_batch(x, {"crop_scale_min": 1.0, "hflip": 1.0}, torch.Generator())
    # a flip only (scale 1, aspect near 1): the mirror image, up to the aspect jitter's resampling
    ramp = torch.arange(40.0).expand(1, 3, 40, 40).contiguous()
    mirror = accel.augment_geometry_batch(ramp, {"crop_scale_min": 1.0, "hflip": 1.0}, torch.Generator().manual_seed(0))
    assert (mirror[0, 0, 20, :-1] - mirror[0, 0, 20, 1:] > 0).all()  # values now fall left to right
    assert flipped.shape == x.shape
    # a crop zooms in: a centred bright square grows
    square = torch.zeros(1, 1, 40, 40)
    square[..., 15:25, 15:25] = 255
    zoomed = accel.augment_geometry_batch(square, {"crop_scale_min": 0.3, "hflip": 0.0},
                                          torch.Generator().manual_seed(1))
    assert (zoomed > 128).sum() > (square > 128).sum()


def test_compile_a_tiny_model_on_the_cpu():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 18))
    try:
        compiled = accel.compile_model(model, True)
        x = torch.randn(2, 3, 16, 16)
        out = compiled(x)
    except Exception as exc:  # no C compiler or an unsupported platform
        pytest.skip(f"torch.compile cannot run here: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    assert torch.allclose(out, model(x), atol=1e-5)
    assert accel.compile_model(model, False) is model


@pytest.fixture
def tiny_view(cli, dataset_copy, tmp_path):
    from maskkit.catalog import open_catalog
    from maskkit.datasets.splits import make_split

    cli("ingest", dataset_copy["train"])
    cli("group", "all")
    catalog = open_catalog(cli.catalog)
    make_split(catalog, "h", "all", val=0.3, seed=0)
    yield catalog, tmp_path / "runs"
    catalog.dispose()


def test_bf16_and_channels_last_fine_tuning_on_the_cpu(tiny_view, monkeypatch):
    """Training and validation forwards run under bf16 autocast, on channels_last batches, and the run
    records its best epoch and validation probabilities as an fp32 run does."""
    catalog, runs = tiny_view
    seen = {"train": set(), "val": set(), "layout": set()}
    real = accel.autocast

    def spy(device, dtype):
        seen["train" if torch.is_grad_enabled() else "val"].add(dtype)
        return real(device, dtype)

    monkeypatch.setattr(accel, "autocast", spy)
    real_to_device = accel.to_device

    def spy_layout(x, device, last):
        out = real_to_device(x, device, last)
        seen["layout"].add(out.is_contiguous(memory_format=torch.channels_last))
        return out

    monkeypatch.setattr(accel, "to_device", spy_layout)
    result = start_run(catalog, view="all", split="h", runs_dir=runs,
                            overrides=TINY + ["train.precision=bf16", "train.channels_last=on"])
    assert seen["train"] == {torch.bfloat16} and seen["val"] == {torch.bfloat16}
    assert seen["layout"] == {True}
    from maskkit.catalog.models import Run
    from sqlmodel import select

    with catalog.session() as s:
        run = s.exec(select(Run).where(Run.name == result.run)).one()
    data = np.load(f"{result.folder}/val_probs.npz")
    assert run.status == "finished" and result.best_epoch == 1 and np.isfinite(data["probs"]).all()
    assert np.allclose(data["probs"].sum(1), 1, atol=1e-4)


def test_the_cache_is_read_a_batch_at_a_time_like_one_image_at_a_time(tiny_view):
    from maskkit.train.data import DecodedCache, ImageDataset, view_samples

    catalog, runs = tiny_view
    samples, view_hash = view_samples(catalog, "all")
    cache = DecodedCache(runs / "cache", samples, view_hash, 32)
    cache.build()
    rows = [5, 0, 9, 3]
    for c in (cache, None):
        ds = ImageDataset(samples, rows, 32, c)
        x, y, r = ds.__getitems__([0, 1, 2, 3])
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and r.tolist() == rows
        for k in range(4):
            one, label, row = ds[k]
            assert torch.equal(one, x[k]) and label == int(y[k]) and row == rows[k]


def test_gpu_bench_prints_its_table_on_the_cpu(tmp_path):
    """`python bench/gpu.py --tiny --device cpu`: the table a lent GPU fills in, measured here on the CPU."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(bench), "--tiny", "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for stage in ("training", "crop", "submit"):
        assert stage in result.stdout
    table = json.loads(out.read_text())
    assert table["device"] == "cpu" and table["training"]["images"] > 0 and table["peak_memory_mb"] > 0
    assert table["crop"]["maskkit_s"] > 0 and table["submit"]["pure_s"] > 0


def test_folds_spread_over_two_devices_run_at_once(cli, dataset_copy, tmp_path):
    """train --folds 2 --devices cpu,cpu: the two folds train in two processes at the same time, then one
    ensemble as usual; a rerun reuses both folds; a bad device list is one line."""
    from maskkit.catalog import open_catalog
    from maskkit.catalog.models import Ensemble, Run
    from sqlmodel import select

    cli("ingest", dataset_copy["train"])
    cli("group", "all")
    runs = tmp_path / "runs"
    out = cli("train", "--view", "all", "--folds", "2", "--devices", "cpu,cpu", "--name", "par", "--runs-dir", runs,
              *TINY).output
    assert "out-of-fold" in out
    catalog = open_catalog(cli.catalog)
    with catalog.session() as s:
        fold_runs = s.exec(select(Run).order_by(Run.fold)).all()
        ens = s.exec(select(Ensemble).where(Ensemble.name == "par")).one()
    assert [r.fold for r in fold_runs] == [0, 1] and all(r.status == "finished" for r in fold_runs)
    assert sorted(ens.members) == sorted(r.name for r in fold_runs)
    (a_start, a_end), (b_start, b_end) = [(r.created_at, r.finished_at) for r in fold_runs]
    assert a_start < b_end and b_start < a_end  # they overlapped: two processes at once
    assert (runs / ".folds" / f"{fold_runs[0].name}.log").is_file()
    oof = np.load(ens.decision["tuned_on"])
    people = cli.db().execute("select count(distinct profile_id) from image where damaged = ?", (False,)).fetchone()[0]
    assert len(set(oof["profile_ids"].tolist())) == people
    again = cli("train", "--view", "all", "--folds", "2", "--devices", "cpu,cpu", "--name", "par2", "--runs-dir", runs,
                *TINY).output
    with catalog.session() as s:
        assert len(s.exec(select(Run)).all()) == 2  # both folds reused
    assert "out-of-fold" in again
    catalog.dispose()
    bad = cli("train", "--view", "all", "--folds", "2", "--devices", "tpu0", ok=False)
    assert bad.exit_code == 2 and "--devices takes GPU numbers" in bad.output
    bad = cli("train", "--view", "all", "--devices", "cpu,cpu", ok=False)
    assert bad.exit_code == 2 and "--devices spreads the folds" in bad.output


def test_every_key_is_ruled_for_both_recipes_and_idle_keys_are_said(cli, dataset_copy):
    """A walk over every config key under both recipes: each is used or said to do nothing there."""
    from maskkit.train.recipes import RULES, idle_settings
    from maskkit.train.schema import KEYS

    for recipe in ("features", "finetune", "auto"):
        cfg = load_config(None, [f"train.recipe={recipe}"])
        for key in KEYS:
            notes = idle_settings(cfg, [key.name])
            used = RULES[key.name][1](cfg)
            assert bool(notes) == (not used), (recipe, key.name)
            if notes:
                assert key.name in notes[0] and "recipe" in notes[0]
    features = load_config(None, ["augment.color_jitter=0.4", "optim.lr=0.01"], notes := [])
    assert any("augment.color_jitter does nothing in the features recipe" in n for n in notes)
    assert any("optim.lr does nothing" in n and "L-BFGS" in n for n in notes)
    assert features["train"]["recipe"] == "auto"  # features on this CPU, finetune where CUDA is present
    from maskkit.train.recipes import recipe_for, recipe_of

    assert recipe_of({**features, "train": {**features["train"], "device": "cpu"}}) == "features"
    assert recipe_for("auto", "cuda:1") == "finetune" and recipe_for("features", "cuda") == "features"
    finetune = []
    load_config(None, ["train.recipe=finetune", "model.prior=none", "model.head_l2=0.1", "optim.lr=0.01"],
                finetune)
    assert [n.split()[0] for n in finetune] == ["model.head_l2"]
    cli("ingest", dataset_copy["train"])
    out = cli("train", "--view", "nope", "augment.cutmix=0.5", ok=False).output
    assert "note: augment.cutmix does nothing in the features recipe" in out
    assert "recipe" in cli("train", "--keys").output


def test_the_config_is_resolved_once_and_args_yaml_holds_no_auto(tiny_view):
    """Both recipes: every auto is made concrete at the start of the run; args.yaml, the catalog's row and the
    checkpoint hold the same resolved values, which eval/submit/predict read back."""
    import torch as _torch
    import yaml

    from maskkit.catalog.models import Run
    from sqlmodel import select

    catalog, runs = tiny_view
    features = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32",
                "data.batch_size=16", "data.workers=0", "schedule.epochs=1", "log.tensorboard=false"]
    for overrides, expect in ((features, {"optim": "lbfgs", "prior": "none", "precision": "fp32"}),
                              (TINY, {"optim": "adamw", "prior": "none", "precision": "fp32"})):
        result = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=overrides)
        saved = yaml.safe_load(open(f"{result.folder}/args.yaml"))
        flat = [f"{s}.{k}={v}" for s, keys in saved.items() for k, v in keys.items()]
        assert not [f for f in flat if f.endswith("=auto")], flat
        assert saved["optim"]["name"] == expect["optim"] and saved["model"]["prior"] == expect["prior"]
        assert saved["train"]["precision"] == expect["precision"] and saved["train"]["device"] == "cpu"
        assert saved["train"]["channels_last"] == "off" and saved["model"]["pretrained"] == "none"
        with catalog.session() as s:
            row = s.exec(select(Run).where(Run.name == result.run)).one()
        assert row.config == saved
        assert _torch.load(f"{result.folder}/best.pt", weights_only=False)["config"] == saved
    from maskkit.train.config import resolve

    packaged = resolve(load_config(None, []), device="cpu", crop_margin=0.3)
    assert packaged["model"]["pretrained"] == "package" and packaged["model"]["prior"] == "face"
    assert resolve(load_config(None, []), device="cpu", crop_margin=None)["model"]["prior"] == "none"
