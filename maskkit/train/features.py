"""Frozen features: a pretrained backbone (and optionally the face prior) run once per image, cached on
disk, so that only the heads train (`model.freeze_backbone=true`): seconds per epoch on a CPU, k folds
for the price of one feature pass.

Per image the bank keeps the backbone's pooled features of the image and of its mirror image (the
mirror is the training-time flip augmentation and the test-time flip average), followed by the face
prior's features when `model.prior=face` (the same for both). Features are keyed by the file's path,
size and mtime and by what extracts them (backbone, weights, image size, prior version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInput
from ..progress import Progress
from .data import MEAN, STD, load_rgb, prepare_image



def _file_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read image ({exc.strerror})") from None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class FeatureExtractor:
    """The frozen part of a feature-mode model: a timm backbone without classifier, plus the face prior."""

    def __init__(self, model_cfg: dict, image_size: int, crop_margin: float | None, device: torch.device,
                 backbone_state: dict | None = None):
        from .models import backbone

        self.image_size = image_size
        self.device = device
        self.prior_kind = model_cfg.get("prior", "none")
        if self.prior_kind == "auto":  # the face prior wherever there are face crops to read it from
            self.prior_kind = "face" if crop_margin is not None else "none"
        if self.prior_kind == "face" and crop_margin is None:
            raise InvalidInput("model.prior=face reads faces from face crops: train on a view of a crop variant "
                               "(maskkit preprocess crop; maskkit group NAME --variant crop), or set model.prior=none")
        self.crop_margin = crop_margin
        cfg = {**model_cfg, "drop_rate": 0.0, "freeze_stages": 0}
        if backbone_state is not None:
            cfg["pretrained"] = "none"
        self.net, self.weights_source = backbone(model_cfg["backbone"], 0, cfg)
        if backbone_state is not None:
            self.net.load_state_dict(backbone_state)
            self.weights_source = "checkpoint"
        self.net.to(device).eval()
        self.cnn_dim = int(self.net.num_features)
        self._prior = None
        self.prior_dim = 0
        if self.prior_kind == "face":
            from ..faces.prior import FEATURE_DIM

            self.prior_dim = FEATURE_DIM
        # what the features depend on (not where the weights came from: training and a run's checkpoint share it)
        self.identity = hashlib.sha1(json.dumps(
            [model_cfg["backbone"], _state_digest(self.net), image_size, self.prior_kind, crop_margin,
             _prior_version() if self.prior_kind == "face" else None]).encode()).hexdigest()[:16]

    @property
    def prior(self):
        if self._prior is None:
            from ..faces.prior import shared_prior

            self._prior = shared_prior(self.crop_margin)
        return self._prior

    @torch.no_grad()
    def _cnn(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).to(self.device)
        x = (x.float() - MEAN.to(self.device)) / STD.to(self.device)
        return self.net(x).float().cpu().numpy(), self.net(x.flip(-1)).float().cpu().numpy()

    def extract(self, paths: list[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
        """(N, 2, D) float32: [plain, mirrored] features of each file."""
        out = []
        for start in range(0, len(paths), batch_size):
            out.append(self.extract_images([load_rgb(p) for p in paths[start:start + batch_size]]))
            if progress:
                progress("features", min(start + batch_size, len(paths)), len(paths))
        return np.concatenate(out) if out else np.zeros((0, 2, self.cnn_dim + self.prior_dim), np.float32)

    def extract_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 2, D) float32 features of RGB uint8 images (each as read from its file)."""
        out = np.zeros((len(images), 2, self.cnn_dim + self.prior_dim), np.float32)
        if not images:
            return out
        plain, mirrored = self._cnn(np.stack([prepare_image(im, self.image_size) for im in images]))
        out[:, 0, :self.cnn_dim], out[:, 1, :self.cnn_dim] = plain, mirrored
        if self.prior_dim:
            out[:, :, self.cnn_dim:] = self.prior.features(images)[:, None, :]
        return out


def _state_digest(net: torch.nn.Module) -> str:
    """A digest of every weight (a few MB: milliseconds)."""
    h = hashlib.sha1()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _prior_version() -> str:
    from ..faces.prior import PRIOR_VERSION

    return PRIOR_VERSION


class FeatureCache:
    """Features of files by extractor, in one .npz per extractor (written atomically, merged on update)."""

    def __init__(self, directory: Path, extractor: FeatureExtractor):
        self.path = Path(directory) / f"features_{extractor.identity}.npz"
        self.extractor = extractor

    def _load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return dict(zip(data["keys"].tolist(), data["features"]))
        except (OSError, ValueError, KeyError):
            return {}  # a damaged cache is rebuilt

    def features(self, paths: list[str], progress: Progress | None = None) -> np.ndarray:
        keys = [_file_key(p) for p in paths]
        known = self._load()
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            new = self.extractor.extract([paths[i] for i in missing], progress=progress)
            for i, f in zip(missing, new):
                known[keys[i]] = f
            from ..files import atomic_path

            with atomic_path(self.path, "feature cache") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, keys=np.array(list(known)), features=np.stack(list(known.values())))
        return np.stack([known[k] for k in keys])
