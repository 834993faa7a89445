"""Training data straight from a catalog view: its snapshot, a split's fold, and a decoded-image cache.

The cache holds every image of a view decoded and resized once, as one uint8 memmap (N x S x S x 3)
keyed by the view's content hash and the size; DataLoader workers map the same file, so epochs after
the first decode nothing.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import DataRoot
from .. import labels as L
from ..errors import Conflict, InvalidInput

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255


@dataclass
class Sample:
    image_id: int
    profile_id: int
    path: str  # absolute
    label: int
    age: int | None = None  # the person's labelled age in years (soft age targets: loss.age_sigma)


def view_samples(catalog: Catalog, view_name: str, *, allow_stale: bool = False) -> tuple[list[Sample], str]:
    """The view's materialized samples (labels as materialized) and its content hash. `allow_stale`: a job that
    started on this snapshot (the later folds of `train --folds`) keeps reading it while labels change."""
    from ..datasets.views import get_view, snapshot, staleness

    view = get_view(catalog, view_name)
    state = staleness(catalog, view_name) if not allow_stale else {"stale": False}
    if state["stale"]:
        raise Conflict(f"view {view_name!r} is stale ({state['changed_labels']} labels changed, {state['removed']} "
                           f"images gone): maskkit group {view_name} --refresh, then train")
    members = snapshot(catalog, view_name)
    if not members:
        raise InvalidInput(f"view {view_name!r} is empty")
    with catalog.session() as session:
        roots = dict(session.execute(select(DataRoot.id, DataRoot.path)).all())
    return [Sample(m["image_id"], m["profile_id"], str(Path(roots[m["root_id"]]) / m["path"]), m["label"],
                   m["age"])
            for m in members], view.content_hash


def load_rgb(path: str) -> np.ndarray:
    """A file's pixels as H x W x 3 uint8 RGB, upright (maskkit.images.read_rgb: the one reader)."""
    from ..images import read_rgb

    return read_rgb(path)


def prepare_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """THE preparation of a model's input: RGB uint8 (any size) -> size x size x 3 uint8, bilinear (PIL).
    Training, validation, eval, submit, predict and export all go through here. The array is writable (torch
    takes it without a copy or a warning)."""
    from PIL import Image

    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb)
    return np.array(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR))


def read_prepared(path: str, size: int) -> np.ndarray:
    """A file prepared as model input (`prepare_image` of its pixels)."""
    return prepare_image(load_rgb(path), size)


class DecodedCache:
    """uint8 memmap of a view's images at one size, built once (atomically) and shared."""

    def __init__(self, directory: Path, samples: list[Sample], view_hash: str, size: int):
        key = hashlib.sha1(f"{view_hash}|{size}|{len(samples)}".encode()).hexdigest()[:16]
        self.path = Path(directory) / f"{key}_{size}.u8"
        self.index_path = self.path.with_suffix(".json")
        self.shape = (len(samples), size, size, 3)
        self.samples = samples
        self.size = size
        self._array = None

    @property
    def ready(self) -> bool:
        return self.path.is_file() and self.index_path.is_file()

    def build(self, progress: Callable[[str, int, int], None] | None = None, workers: int = 4) -> None:
        if self.ready:
            return
        from ..files import atomic_path, write_text

        with atomic_path(self.path, "decoded cache") as tmp:
            array = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
            with ThreadPoolExecutor(workers) as pool:
                for i, img in enumerate(pool.map(lambda s: read_prepared(s.path, self.size), self.samples)):
                    array[i] = img
                    if progress and (i % 64 == 0 or i == len(self.samples) - 1):
                        progress("decode cache", i + 1, len(self.samples))
            array.flush()
            del array
        write_text(self.index_path, json.dumps({"image_ids": [s.image_id for s in self.samples], "shape": self.shape}))

    def array(self) -> np.ndarray:
        if self._array is None:  # opened lazily: each DataLoader worker maps the file itself
            self._array = np.memmap(self.path, mode="r", dtype=np.uint8, shape=self.shape)
        return self._array

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state


class ImageDataset(torch.utils.data.Dataset):
    """(uint8 CHW image, label, row) for the chosen rows of a view, as prepared (`prepare_image`), never
    augmented here: augmentation runs per batch on the training device (`accel.augment_geometry_batch`,
    `prepare_batch`), so workers pass 4x smaller uint8 tensors. With the decoded cache a whole batch is one
    slice of the memmap (`__getitems__`, collated by `collate_batch`): no per-image Python work."""

    def __init__(self, samples: list[Sample], rows: list[int], size: int, cache: DecodedCache | None):
        self.samples, self.rows, self.size = samples, rows, size
        self.cache = cache
        self._labels = np.array([s.label for s in samples], dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def load(self, row: int) -> np.ndarray:
        return self.cache.array()[row] if self.cache is not None else read_prepared(self.samples[row].path, self.size)

    def __getitem__(self, i):
        row = self.rows[i]
        return torch.from_numpy(np.array(self.load(row))).permute(2, 0, 1), self.samples[row].label, row

    def __getitems__(self, indices: list[int]):
        rows = np.asarray([self.rows[i] for i in indices], dtype=np.int64)
        if self.cache is not None:
            order = np.argsort(rows, kind="stable")  # memmap reads in file order, then back in the asked order
            images = np.empty((len(rows), self.size, self.size, 3), np.uint8)
            images[order] = self.cache.array()[rows[order]]
        else:
            images = np.stack([self.load(int(r)) for r in rows]) if len(rows) else \
                np.zeros((0, self.size, self.size, 3), np.uint8)
        return (torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(self._labels[rows]),
                torch.from_numpy(rows))


def collate_batch(batch):
    """The DataLoader's collate for `ImageDataset.__getitems__`: the batch is already one tensor each."""
    return batch


def prepare_batch(x: torch.Tensor, augment: dict | None = None) -> torch.Tensor:
    """uint8 N x 3 x H x W on the device -> normalised float; with colour jitter (brightness, contrast,
    saturation, one factor each per image) when augmenting."""
    x = x.float()
    if augment and augment["color_jitter"] > 0:
        j, n = augment["color_jitter"], len(x)
        factors = torch.empty(3, n, 1, 1, 1, device=x.device).uniform_(1 - j, 1 + j)
        x = x * factors[0]
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * factors[1] + mean
        grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = ((x - grey) * factors[2] + grey).clamp(0, 255)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: dict, generator: torch.Generator,
              extra: tuple = ()) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """CutMix / Mixup with their probabilities on labels `y` (N,) or soft targets (N,18); returns images, (N,18) soft targets and the `extra` inputs (the
    prior's features) mixed by the same pairs and weight."""
    target = torch.nn.functional.one_hot(y, L.NUM_CLASSES).float() if y.dim() == 1 else y
    r = torch.rand((), generator=generator).item()
    if r >= cfg["cutmix"] + cfg["mixup"] or len(x) < 2:
        return x, target, extra
    perm = torch.randperm(len(x), generator=generator)
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    if r < cfg["cutmix"]:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
        y1, y2, x1, x2 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
        lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    extra = tuple(lam * e + (1 - lam) * e[perm] for e in extra)
    return x, lam * target + (1 - lam) * target[perm], extra
