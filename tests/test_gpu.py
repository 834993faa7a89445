"""The GPU paths (skipped without CUDA; `pytest -m gpu` on a GPU server): mixed-precision training, resume,
feature runs, face crops and submit on the device."""

from pathlib import Path

import numpy as np
import pytest
import torch

from maskkit.catalog import open_catalog
from maskkit.train.runs import start_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
        "data.workers=2", "log.tensorboard=false", "train.device=cuda"]


@pytest.fixture
def gpu_view(cli, dataset_copy, tmp_path):
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    cli("group", "all")
    cli("split", "k2", "--view", "all", "--folds", "2", "--seed", "0")
    catalog = open_catalog(cli.catalog)
    yield catalog, tmp_path / "runs"
    catalog.dispose()


def test_amp_fine_tuning_and_resume_on_cuda(gpu_view):
    catalog, runs = gpu_view
    args = TINY + ["train.recipe=finetune", "model.head=multi", "train.precision=auto", "schedule.epochs=2"]
    result = start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=args)
    folder = Path(result.folder)
    probs = np.load(folder / "val_probs.npz")["probs"]
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-3)
    state = torch.load(folder / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["config"]["train"]["device"] == "cuda"


def test_feature_run_and_submit_on_cuda(cli, gpu_view):
    catalog, runs = gpu_view
    cli("train", "--view", "all", "--folds", "2", "--runs-dir", str(runs), "--name", "g", *TINY, "schedule.epochs=2")
    out = cli("submit", "g", "--device", "cuda", "--out", str(runs / "sub.csv")).output
    assert (runs / "sub.csv").is_file() and "rows" in out


def test_face_crop_on_cuda(cli, gpu_view):
    out = cli("preprocess", "crop", "--device", "cuda", "--target", "all").output
    assert "crop train" in out and "failed" in out


def test_precision_layout_and_loader_are_chosen_for_cuda(gpu_view, monkeypatch):
    """On CUDA, auto means bf16 (or fp16 with loss scaling), channels_last, pinned batches."""
    from maskkit.train import accel

    catalog, runs = gpu_view
    seen = {"dtype": set(), "last": set(), "pinned": set()}
    real_autocast, real_to_device = accel.autocast, accel.to_device

    def spy_autocast(device, dtype):
        seen["dtype"].add(dtype)
        return real_autocast(device, dtype)

    def spy_to_device(x, device, last):
        seen["pinned"].add(x.is_pinned())
        out = real_to_device(x, device, last)
        seen["last"].add(out.is_contiguous(memory_format=torch.channels_last))
        return out

    monkeypatch.setattr(accel, "autocast", spy_autocast)
    monkeypatch.setattr(accel, "to_device", spy_to_device)
    args = TINY + ["train.recipe=finetune", "model.head=multi", "schedule.epochs=1"]
    start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=args)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert seen["dtype"] == {expected} and seen["last"] == {True} and seen["pinned"] == {True}


def test_batch_augmentation_on_cuda_matches_the_cpu():
    from maskkit.train.accel import augment_geometry_batch

    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    cfg = {"crop_scale_min": 0.5, "hflip": 0.5}
    on_cpu = augment_geometry_batch(x, cfg, torch.Generator().manual_seed(5))
    on_gpu = augment_geometry_batch(x.cuda(), cfg, torch.Generator().manual_seed(5))
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-2)


def test_compiled_fine_tuning_on_cuda(gpu_view):
    catalog, runs = gpu_view
    args = TINY + ["train.recipe=finetune", "model.head=single", "schedule.epochs=1", "train.compile=true"]
    result = start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=args)
    probs = np.load(Path(result.folder) / "val_probs.npz")["probs"]
    assert np.isfinite(probs).all()
