"""The two recipes (train.recipe): features and finetune, each whole. The finetune recipe takes the face prior:
its features, cached once per image, join the pooled CNN features before the heads, and every inference
path (eval, submit, predict, photos) computes them the same way; ONNX export refuses it in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sqlmodel import select

FINETUNE = ["train.recipe=finetune", "model.backbone=test_efficientnet", "model.pretrained=none",
            "data.image_size=32", "data.batch_size=16", "data.workers=0", "log.tensorboard=false",
            "model.head=multi", "schedule.epochs=2"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """12 people made from one real face photo (the face prior finds a face in each crop), plus an eval set."""
    pytest.importorskip("skimage.data")
    from maskkit.demo_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("recipefaces"), people=12, eval_people=2, seed=3, messy=False,
                        faces="photo")


@pytest.fixture
def crop_view(cli, faces, tmp_path):
    cli("ingest", faces["train"])
    cli("preprocess", "crop")
    cli("group", "fc", "--variant", "crop")
    return tmp_path / "runs"


def test_finetune_with_the_face_prior_trains_and_predicts_through_every_path(cli, crop_view, faces, tmp_path,
                                                                          monkeypatch):
    from maskkit.catalog.engine import open_catalog
    from maskkit.catalog.models import Run
    from maskkit.evaluate.predict import get_run, load_model, predict_paths
    from maskkit.train import features as F
    from maskkit.train.job import prepare

    runs = crop_view
    out = cli("train", "--view", "fc", "--folds", "2", "--runs-dir", runs, "--name", "ft", *FINETUNE).output
    assert "out-of-fold" in out and "recipe: finetune (train.recipe=finetune)" in out
    catalog = open_catalog(cli.catalog)
    with catalog.session() as s:
        rows = s.exec(select(Run).order_by(Run.id)).all()
    assert len(rows) == 2
    saved = yaml.safe_load(open(Path(rows[0].folder) / "args.yaml"))
    assert saved["train"]["recipe"] == "finetune" and saved["model"]["prior"] == "face"  # auto: face on crops
    state = torch.load(Path(rows[0].folder) / "best.pt", weights_only=False)
    assert "prior_mean" in state["model"] and state["crop_margin"] is not None
    assert state["model"]["heads.mask.weight"].shape[1] > 128 + 64  # the CNN's features plus the prior's
    assert list((runs / "cache").glob("features_prior-*/shard-*.npz"))  # the prior's features, cached once

    # the checkpoint gives back the validation probabilities it was chosen by, from files and from images
    val = np.load(Path(rows[0].folder) / "val_probs.npz")
    job = prepare(catalog, "fc", "fc-2fold", 0, state["config"])
    paths = {smp.image_id: smp.path for smp in job.samples}
    files = [paths[int(i)] for i in val["image_ids"]]
    model = load_model(get_run(catalog, rows[0].name))
    assert model.uses_prior and model.reads_images
    calls = []
    real = F.PriorExtractor.extract

    def counted(self, batch, **kw):
        calls.append(len(batch))
        return real(self, batch, **kw)

    monkeypatch.setattr(F.PriorExtractor, "extract", counted)
    again = predict_paths([model], files)[0]
    assert np.allclose(again, val["probs"], atol=1e-4)
    assert calls == []  # every file's prior features came from the training cache
    from maskkit.train.data import load_rgb

    direct = model.probs_images([load_rgb(p) for p in files])
    assert np.allclose(direct, val["probs"], atol=1e-4)
    with pytest.raises(Exception, match="face prior"):
        model.probs(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))

    # eval, submit and predict read the ensemble and compute the eval images' prior features
    assert "macro F1" in cli("eval", "ft").output
    cli("submit", "ft", "--eval", faces["eval"], "--out", tmp_path / "sub.csv")
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageID,ans" and len(lines) > 1 and all(0 <= int(x.split(",")[1]) < 18 for x in lines[1:])
    images = sorted(Path(faces["eval"], "images").iterdir())[:2]
    shown = json.loads(cli("predict", str(images[0]), "--run", "ft", "--json").output)
    assert shown and "class" in json.dumps(shown)
    bad = cli("export", rows[0].name, "--onnx", tmp_path / "m.onnx", ok=False)
    assert bad.exit_code == 2 and "face prior" in bad.output and "Traceback" not in bad.output


def test_the_prior_fused_network_learns_from_the_prior_alone():
    """Images that carry nothing, prior features that carry the label: the fused heads must learn the label (a
    model that stopped reading the prior would stay at chance)."""
    from maskkit import labels as L
    from maskkit.train.models import create_model

    torch.manual_seed(0)
    cfg = {"backbone": "test_efficientnet", "pretrained": "none", "head": "multi", "drop_rate": 0.0,
           "freeze_stages": 0, "soft_l2": 0.0}
    n, dim = 96, 24
    y = torch.randint(0, L.NUM_CLASSES, (n,))
    prior = torch.randn(n, dim) * 0.1
    prior[:, :L.NUM_CLASSES] += 3 * torch.nn.functional.one_hot(y, L.NUM_CLASSES).float()
    model = create_model(cfg, prior_dim=dim)
    model.set_prior_scale(prior)
    from maskkit.train.losses import Criterion

    loss_fn = Criterion({"name": "ce", "label_smoothing": 0.0, "focal_gamma": 2.0, "focal_alpha": None}, None)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(torch.randn(n, 3, 32, 32), prior), y)  # new noise each step: images tell nothing
        loss.backward()
        opt.step()
    model.eval()
    fresh = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        accuracy = float((model.probs(model(fresh, prior)).argmax(1) == y).float().mean())
        scrambled = float((model.probs(model(fresh, prior[torch.randperm(n)])).argmax(1) == y).float().mean())
    assert accuracy > 0.9 and scrambled < 0.3


def test_mixing_a_batch_mixes_the_prior_features_by_the_same_pairs():
    from maskkit.train.data import mix_batch

    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    prior = torch.arange(4, dtype=torch.float32).view(4, 1).expand(4, 5).contiguous()
    mixed, target, (p,) = mix_batch(x, y, {"cutmix": 0.0, "mixup": 1.0}, torch.Generator().manual_seed(1), (prior,))
    assert torch.allclose(mixed[:, 0, 0, 0], p[:, 0])  # image and prior mixed alike
    weights = target @ torch.arange(18, dtype=torch.float32)
    assert torch.allclose(weights, p[:, 0], atol=1e-5)


@pytest.mark.parametrize("recipe,cls", [("features", "FeatureTrainer"), ("finetune", "FineTuneTrainer")])
def test_each_recipe_gets_its_trainer_and_auto_follows_the_device(recipe, cls):
    from maskkit.train.config import load_config, resolve
    from maskkit.train.recipes import recipe_of

    cfg = load_config(None, [f"train.recipe={recipe}", "model.prior=none"])
    assert recipe_of(cfg) == recipe
    auto = load_config(None, [])
    assert resolve(auto, device="cpu", crop_margin=None)["train"]["recipe"] == "features"
    on_gpu = resolve(auto, device="cuda", crop_margin=0.3)
    assert on_gpu["train"]["recipe"] == "finetune" and on_gpu["optim"]["name"] == "adamw"
    assert on_gpu["model"]["prior"] == "face"  # the fine-tune recipe keeps the face knowledge
    assert resolve(load_config(None, ["model.head=soft", "train.recipe=finetune"]), device="cpu",
                   crop_margin=0.3)["model"]["prior"] == "none"  # soft: a network per task, no joined prior
    from maskkit.train.recipes import announce

    assert "recipe: features (train.recipe=auto and no GPU is here" in announce(
        load_config(None, ["train.device=cpu"]))
    assert announce(load_config(None, ["train.device=cuda"])).startswith("recipe: finetune (train.recipe=auto and a GPU")
    from maskkit.train import feature_trainer, finetune

    module = feature_trainer if recipe == "features" else finetune
    assert hasattr(module, cls)


def test_an_older_runs_config_maps_freeze_backbone_to_the_recipe():
    from maskkit.train.config import complete

    old = {"model": {"freeze_backbone": False, "head": "single"}, "train": {"seed": 3}}
    assert complete(old)["train"]["recipe"] == "finetune"
    assert complete({"model": {"freeze_backbone": True}})["train"]["recipe"] == "features"
    assert complete(old)["loss"]["age_sigma"] == 0  # trained on the bands themselves (soft targets came later)
    assert complete({"loss": {"age_sigma": 4.0}})["loss"]["age_sigma"] == 4.0
