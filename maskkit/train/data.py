"""Training data straight from a catalog view: its snapshot, a split's fold, and a decoded-image cache.

The cache holds every image of a view decoded and resized once, as one uint8 memmap (N x S x S x 3)
keyed by the view's content hash and the size; DataLoader workers map the same file, so epochs after
the first decode nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import DataRoot
from ..errors import MaskkitError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255


@dataclass
class Sample:
    image_id: int
    profile_id: int
    path: str  # absolute
    label: int


def view_samples(catalog: Catalog, view_name: str) -> tuple[list[Sample], str]:
    from ..datasets.views import get_view, snapshot, staleness

    view = get_view(catalog, view_name)
    state = staleness(catalog, view_name)
    if state["stale"]:
        raise MaskkitError(f"view {view_name!r} is stale ({state['changed_labels']} labels changed, {state['removed']} "
                           f"images gone): maskkit group {view_name} --refresh, then train")
    members = snapshot(catalog, view_name)
    if not members:
        raise MaskkitError(f"view {view_name!r} is empty")
    with catalog.session() as session:
        roots = dict(session.execute(select(DataRoot.id, DataRoot.path)).all())
    return [Sample(m["image_id"], m["profile_id"], str(Path(roots[m["root_id"]]) / m["path"]), m["label"])
            for m in members], view.content_hash


def decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        array = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
        with ThreadPoolExecutor(workers) as pool:
            for i, img in enumerate(pool.map(lambda s: decode(s.path, self.size), self.samples)):
                array[i] = img
                if progress and (i % 64 == 0 or i == len(self.samples) - 1):
                    progress("decode cache", i + 1, len(self.samples))
        array.flush()
        del array
        tmp.replace(self.path)
        self.index_path.write_text(json.dumps({"image_ids": [s.image_id for s in self.samples], "shape": self.shape}))

    def array(self) -> np.ndarray:
        if self._array is None:  # opened lazily: each DataLoader worker maps the file itself
            self._array = np.memmap(self.path, mode="r", dtype=np.uint8, shape=self.shape)
        return self._array

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state


class ImageDataset(torch.utils.data.Dataset):
    """(image CHW float normalized, label, index) for the chosen rows of a view."""

    def __init__(self, samples: list[Sample], rows: list[int], size: int, augment: dict | None,
                 cache: DecodedCache | None):
        self.samples, self.rows, self.size = samples, rows, size
        self.augment, self.cache = augment, cache

    def __len__(self):
        return len(self.rows)

    def load(self, row: int) -> torch.Tensor:
        img = self.cache.array()[row] if self.cache is not None else decode(self.samples[row].path, self.size)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # a copy: the memmap is read-only

    def __getitem__(self, i):
        row = self.rows[i]
        x = self.load(row)
        if self.augment:
            x = augment_image(x, self.augment)
        x = (x.float() - MEAN) / STD
        return x, self.samples[row].label, row


def augment_image(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """uint8 CHW -> augmented uint8 CHW: random resized crop, horizontal flip, colour jitter."""
    from torchvision.transforms import v2

    size = x.shape[-1]
    if cfg["crop_scale_min"] < 1:
        x = v2.RandomResizedCrop(size, scale=(cfg["crop_scale_min"], 1.0), ratio=(0.9, 1.1), antialias=True)(x)
    if torch.rand(()) < cfg["hflip"]:
        x = x.flip(-1)
    if cfg["color_jitter"] > 0:
        j = cfg["color_jitter"]
        x = v2.ColorJitter(brightness=j, contrast=j, saturation=j)(x)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix / Mixup with their probabilities; returns images and (N,18) soft targets."""
    target = torch.nn.functional.one_hot(y, 18).float()
    r = torch.rand((), generator=generator).item()
    if r >= cfg["cutmix"] + cfg["mixup"] or len(x) < 2:
        return x, target
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
    return x, lam * target + (1 - lam) * target[perm]
