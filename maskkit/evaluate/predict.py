"""Predictions of a run or an ensemble: batched inference over image files, optional horizontal-flip TTA,
soft (mean of probabilities, never logits) or hard (majority) voting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Run, View
from ..errors import MaskkitError
from ..train.data import MEAN, STD, decode

Progress = Callable[[str, int, int], None]


@dataclass
class Source:
    """A run or an ensemble, resolved to runs, weights and voting."""

    name: str
    runs: list[Run]
    weights: list[float]
    vote: str = "soft"
    tta: str | None = None
    is_ensemble: bool = False


def get_run(catalog: Catalog, name: str) -> Run:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is None:
            names = list(session.execute(select(Run.name).order_by(Run.id)).scalars())[-10:]
            raise MaskkitError(f"unknown run or ensemble {name!r} (recent runs: {', '.join(names) or 'none'})")
        return run


def resolve(catalog: Catalog, name: str) -> Source:
    with catalog.session() as session:
        ens = session.execute(select(Ensemble).where(Ensemble.name == name)).scalars().first()
    if ens is not None:
        return Source(ens.name, [get_run(catalog, r) for r in ens.members], list(ens.weights), ens.vote, ens.tta, True)
    run = get_run(catalog, name)
    if not (Path(run.folder) / "best.pt").is_file():
        raise MaskkitError(f"run {name} has no best.pt (status {run.status})")
    return Source(run.name, [run], [1.0])


def run_variant(catalog: Catalog, run: Run) -> str:
    with catalog.session() as session:
        view = session.get(View, run.view_id)
        return view.spec.get("variant", "original") if view else "original"


class RunModel:
    """A run's best checkpoint, ready for inference."""

    def __init__(self, run: Run, device: str = "cpu"):
        from ..train.models import create_model

        state = torch.load(Path(run.folder) / "best.pt", map_location="cpu", weights_only=False)
        self.cfg = state["config"]
        model_cfg = {**self.cfg["model"], "pretrained": "none"}
        self.model = create_model(model_cfg)
        self.model.load_state_dict(state["model"])
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.size = self.cfg["data"]["image_size"]
        self.name = run.name

    @torch.no_grad()
    def probs(self, batch_uint8: torch.Tensor, tta: str | None = None) -> np.ndarray:
        """N x 3 x S x S uint8 -> N x 18 probabilities."""
        x = ((batch_uint8.float() - MEAN) / STD).to(self.device)
        p = self.model.probs(self.model(x))
        if tta == "hflip":
            p = (p + self.model.probs(self.model(x.flip(-1)))) / 2
        return p.cpu().numpy()


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(decode(self.paths[i], self.size))).permute(2, 0, 1)


def predict_paths(models: list[RunModel], paths: list[str], *, tta: str | None = None, batch_size: int = 64,
                  workers: int = 2, progress: Progress | None = None) -> list[np.ndarray]:
    """Probabilities of every model for every file (one decode per image size)."""
    out: list[list[np.ndarray]] = [[] for _ in models]
    by_size: dict[int, list[int]] = {}
    for k, m in enumerate(models):
        by_size.setdefault(m.size, []).append(k)
    done = 0
    for size, group in by_size.items():
        loader = torch.utils.data.DataLoader(_Files(paths, size), batch_size=batch_size, num_workers=workers)
        for batch in loader:
            for k in group:
                out[k].append(models[k].probs(batch, tta))
            done += len(batch)
            if progress:
                progress("predict", done, len(paths) * len(by_size))
    return [np.concatenate(parts) if parts else np.zeros((0, 18)) for parts in out]


def combine(prob_list: list[np.ndarray], weights: list[float], vote: str) -> np.ndarray:
    """Soft: weighted mean of probabilities. Hard: weighted votes of each model's argmax (ties -> mean probs)."""
    if len(prob_list) != len(weights):
        raise MaskkitError(f"{len(weights)} weights for {len(prob_list)} runs")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise MaskkitError("ensemble weights must be non-negative and not all zero")
    w = w / w.sum()
    soft = sum(wi * p for wi, p in zip(w, prob_list))
    if vote == "soft":
        return soft
    if vote != "hard":
        raise MaskkitError(f"vote must be soft or hard, got {vote!r}")
    votes = np.zeros_like(soft)
    for wi, p in zip(w, prob_list):
        votes[np.arange(len(p)), p.argmax(1)] += wi
    votes += 1e-6 * soft  # ties broken by the averaged probabilities
    return votes / votes.sum(1, keepdims=True)
