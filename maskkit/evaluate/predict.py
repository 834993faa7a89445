"""Predictions of a run or an ensemble: batched inference over image files, optional horizontal-flip TTA,
soft (mean of probabilities, never logits) or hard (majority) voting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Run, View
from .. import labels as L
from ..errors import InvalidInput, NotFound
from ..progress import Progress
from ..train.data import MEAN, STD, prepare_image, read_prepared
from .decision import apply_bias


@dataclass
class Source:
    """A run or an ensemble, resolved to runs, weights and voting."""

    name: str
    runs: list[Run]
    weights: list[float]
    vote: str = "soft"
    tta: str | None = None
    is_ensemble: bool = False
    bias: list[float] | None = None  # per-class decision offsets (see evaluate/decision.py)
    people: dict | None = None  # how its predictions group photos into people (evaluate/people.py), if it pools


def get_run(catalog: Catalog, name: str) -> Run:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is None:
            names = list(session.execute(select(Run.name).order_by(Run.id)).scalars())[-10:]
            raise NotFound(f"unknown run or ensemble {name!r} (recent runs: {', '.join(names) or 'none'})")
        return run


def resolve(catalog: Catalog, name: str) -> Source:
    with catalog.session() as session:
        ens = session.execute(select(Ensemble).where(Ensemble.name == name)).scalars().first()
    if ens is not None:
        return Source(ens.name, [get_run(catalog, r) for r in ens.members], list(ens.weights), ens.vote, ens.tta, True,
                      (ens.decision or {}).get("bias"), (ens.decision or {}).get("people"))
    run = get_run(catalog, name)
    if not (Path(run.folder) / "best.pt").is_file():
        raise NotFound(f"run {name} has no best.pt (status {run.status})")
    return Source(run.name, [run], [1.0])


def run_variant(catalog: Catalog, run: Run) -> str:
    with catalog.session() as session:
        view = session.get(View, run.view_id)
        return view.spec.get("variant", "original") if view else "original"


class RunModel:
    """A run's best checkpoint, ready for inference (`load_model` picks the recipe's class). Every model may need
    per-image features beside the pixels (`extractor`: the feature run's frozen backbone and prior, or the face
    prior of a run fine-tuned with it; None: pixels only); `cached_features` reads them through the feature
    cache, so the fold models of a k-fold ensemble share one pass and training's cache answers for its images.
    `probs_images` takes decoded images (and their features when already computed)."""

    reads_images = True  # the network itself reads the prepared images (fine-tuned runs)
    backbone: torch.nn.Module | None = None  # feature runs: the frozen backbone in front of the heads

    def __init__(self, run: Run, state: dict, cfg: dict, device: str):
        self.cfg = cfg
        self.device = torch.device(device)
        self.size = cfg["data"]["image_size"]
        self.name = run.name
        self.cache_dir = Path(cfg["data"].get("cache_dir") or Path(run.folder).parent / "cache")
        self.decision_bias = state.get("decision_bias")  # loss.logit_adjust, as validated
        self.extractor = None
        self.model = self._network(state)
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()

    def _network(self, state: dict) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def uses_prior(self) -> bool:
        return self.extractor is not None and self.extractor.prior_dim > 0

    def cached_features(self, paths: list[str], progress: Progress | None = None) -> np.ndarray | None:
        """The per-image features these files need (None: pixels only), from the feature cache."""
        if self.extractor is None:
            return None
        from ..train.features import FeatureCache

        return FeatureCache(self.cache_dir, self.extractor).features(paths, progress)

    def image_features(self, images: list[np.ndarray]) -> np.ndarray | None:
        """The per-image features of decoded images (not cached: photos and crops made on the fly)."""
        return None if self.extractor is None else self.extractor.extract_images(images)

    def probs_images(self, images: list[np.ndarray], tta: str | None = None,
                     features: np.ndarray | None = None) -> np.ndarray:
        """RGB uint8 images as read from their files (any size) -> N x 18 probabilities; `features`: theirs, when
        already computed (`image_features` of another model with the same extractor)."""
        raise NotImplementedError


class FeatureRunModel(RunModel):
    """`train.recipe=features`: the checkpoint's frozen backbone (and the face prior) make each image's features,
    [image, mirror]; the heads' two predictions are averaged, as validated."""

    reads_images = False

    def _network(self, state: dict) -> torch.nn.Module:
        from ..train.features import FeatureExtractor
        from ..train.models import FeatureHeads

        self.extractor = FeatureExtractor(self.cfg["model"], self.size, state.get("crop_margin"), self.device,
                                          backbone_state=state["backbone"])
        self.backbone = self.extractor.pooled  # the pooled features the heads read (with model.pool_blocks)
        return FeatureHeads(self.cfg["model"], self.extractor.cnn_dim + self.extractor.prior_dim)

    @torch.no_grad()
    def probs_from_features(self, feats: np.ndarray) -> np.ndarray:
        """(N, 2, D) features of [image, mirror] -> N x 18, the two averaged as validated."""
        x = torch.from_numpy(feats).to(self.device)
        return apply_bias(self.model.mirror_probs(x).cpu().numpy(), self.decision_bias)

    def probs_images(self, images, tta=None, features=None):
        return self.probs_from_features(self.image_features(images) if features is None else features)


class FineTunedRunModel(RunModel):
    """`train.recipe=finetune`: the network reads prepared uint8 batches (`probs`), and, trained with the face
    prior, the prior's features of the same images beside them."""

    def _network(self, state: dict) -> torch.nn.Module:
        from ..train.models import create_model

        prior_dim = 0
        if self.cfg["model"]["prior"] == "face":
            from ..train.features import PriorExtractor

            self.extractor = PriorExtractor(state.get("crop_margin"))
            prior_dim = self.extractor.prior_dim
        return create_model({**self.cfg["model"], "pretrained": "none"}, prior_dim=prior_dim)

    @torch.no_grad()
    def probs(self, batch_uint8: torch.Tensor, tta: str | None = None, prior: np.ndarray | None = None) -> np.ndarray:
        """N x 3 x S x S uint8 (prepared with `prepare_image`) -> N x 18 probabilities; `prior`: the images' prior
        features, for a run fine-tuned with the face prior."""
        extra = ()
        if self.extractor is not None:
            if prior is None:
                raise InvalidInput(f"run {self.name} was fine-tuned with the face prior: give the images' prior "
                                   "features (probs_images and predict_paths compute them)")
            extra = (torch.as_tensor(np.asarray(prior, np.float32)).to(self.device),)
        x = ((batch_uint8.float() - MEAN) / STD).to(self.device)
        p = self.model.probs(self.model(x, *extra))
        if tta == "hflip":
            p = (p + self.model.probs(self.model(x.flip(-1), *extra))) / 2
        return apply_bias(p.cpu().numpy(), self.decision_bias)

    def probs_images(self, images, tta=None, features=None):
        batch = torch.stack([torch.from_numpy(prepare_image(im, self.size)).permute(2, 0, 1) for im in images])
        return self.probs(batch, tta, self.image_features(images) if features is None else features)


def load_model(run: Run, device: str = "cpu") -> RunModel:
    """A run's best checkpoint as its recipe's inference model."""
    from ..train.config import complete

    state = torch.load(Path(run.folder) / "best.pt", map_location="cpu", weights_only=False)
    cfg = complete(state["config"])  # a run of an older maskkit: its keys mapped (model.freeze_backbone)
    kind = FeatureRunModel if cfg["train"]["recipe"] == "features" else FineTunedRunModel
    return kind(run, state, cfg, device)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(read_prepared(self.paths[i], self.size))).permute(2, 0, 1)


def predict_paths(models: list[RunModel], paths: list[str], *, tta: str | None = None, batch_size: int = 64,
                  workers: int = 2, progress: Progress | None = None) -> list[np.ndarray]:
    """Probabilities of every model for every file (one decode per image size)."""
    out: list[list[np.ndarray]] = [[] for _ in models]
    by_size: dict[int, list[int]] = {}
    features: dict[str, np.ndarray] = {}  # by extractor: the fold models of a k-fold ensemble share one pass
    for k, m in enumerate(models):
        if m.extractor is not None and m.extractor.identity not in features:
            features[m.extractor.identity] = m.cached_features(paths, progress)
        if m.reads_images:
            by_size.setdefault(m.size, []).append(k)
        else:
            out[k].append(m.probs_from_features(features[m.extractor.identity]))
    done = 0
    for size, group in by_size.items():
        loader = torch.utils.data.DataLoader(_Files(paths, size), batch_size=batch_size, num_workers=workers)
        start = 0
        for batch in loader:
            for k in group:
                m = models[k]
                prior = None
                if m.extractor is not None:
                    prior = features[m.extractor.identity][start:start + len(batch)]
                out[k].append(m.probs(batch, tta, prior))
            start += len(batch)
            done += len(batch)
            if progress:
                progress("predict", done, len(paths) * len(by_size))
    return [np.concatenate(parts) if parts else np.zeros((0, L.NUM_CLASSES)) for parts in out]


def decide(source: Source, prob_list: list[np.ndarray], groups: np.ndarray | None = None) -> np.ndarray:
    """A source's final probabilities: its members combined by its vote, people pooled (when it pools and the
    images' `groups` are given: evaluate/people.py), then its decision offsets applied."""
    from .decision import apply_bias

    combined = combine(prob_list, source.weights, source.vote)
    if source.people is not None and groups is not None:
        from .people import pool

        combined = pool(combined, groups, source.people.get("composition"))
    return apply_bias(combined, source.bias)


def combine(prob_list: list[np.ndarray], weights: list[float], vote: str) -> np.ndarray:
    """Soft: weighted mean of probabilities. Hard: weighted votes of each model's argmax (ties -> mean probs)."""
    if len(prob_list) != len(weights):
        raise InvalidInput(f"{len(weights)} weights for {len(prob_list)} runs")
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InvalidInput(f"ensemble weights must be finite, non-negative and not all zero, got {list(weights)}")
    w = w / w.sum()
    soft = sum(wi * p for wi, p in zip(w, prob_list))
    if vote == "soft":
        return soft
    if vote != "hard":
        raise InvalidInput(f"vote must be soft or hard, got {vote!r}")
    votes = np.zeros_like(soft)
    for wi, p in zip(w, prob_list):
        votes[np.arange(len(p)), p.argmax(1)] += wi
    votes += 1e-6 * soft  # ties broken by the averaged probabilities
    return votes / votes.sum(1, keepdims=True)
