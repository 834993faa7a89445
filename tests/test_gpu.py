"""The GPU paths (skipped without CUDA; `pytest -m gpu` on a GPU server): mixed-precision training, resume,
feature runs, face crops and submit on the device."""

from pathlib import Path

import numpy as np
import pytest
import torch

from maskkit.catalog import open_catalog
from maskkit.train import loop

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
    args = TINY + ["model.freeze_backbone=false", "model.head=multi", "train.amp=true", "schedule.epochs=2"]
    result = loop.start_run(catalog, view="all", split="k2", fold=0, runs_dir=runs, overrides=args)
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
