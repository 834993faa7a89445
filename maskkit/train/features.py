"""Frozen features: a pretrained backbone (and optionally the face prior) run once per image, cached on
disk, so that only the heads train (`train.recipe=features`): seconds per epoch on a CPU, k folds
for the price of one feature pass.

Per image the bank keeps the backbone's pooled features of the image and of its mirror image (the
mirror is the training-time flip augmentation and the test-time flip average), followed by the face
prior's features when `model.prior=face` (the same for both). Features are keyed by the file's path,
size and mtime and by what extracts them (backbone, weights, image size, prior version).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from contextlib import contextmanager
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


NEEDS_CROPS = ("model.prior=face reads faces from face crops: train on a view of a crop variant (maskkit preprocess "
               "crop; maskkit group NAME --variant crop), or set model.prior=none")


class _PriorWorkers:
    """The face prior in worker processes for a long pass (needs crop_margin, prior_dim)."""

    crop_margin: float | None
    prior_dim: int
    _prior = None

    @property
    def prior(self):
        if self._prior is None:
            from ..faces.prior import shared_prior

            self._prior = shared_prior(self.crop_margin)
        return self._prior

    @contextmanager
    def parallel(self, images: int, prior_workers: bool = True):
        """For a pass over `images` files: the face prior in worker processes beside the CNN (single-threaded
        dlib and ONNX work: ~95 ms per image on a core, ~90 of them dlib's descriptor, against ~45 ms for the
        ONNX Runtime backbone, image and mirror), one per free core. Small passes, one free core or
        MASKKIT_THREADS=1 keep everything in this process; so does `prior_workers=False` (the prior's features are
        given: FeatureCache read them from the prior's own cache)."""
        from ..cpus import compute_threads, free_cores

        cores = free_cores()
        if not prior_workers or not self.prior_dim or images < PARALLEL_MIN_IMAGES or cores < 2:
            yield
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_prior_worker_init, initargs=(self.crop_margin,))
        self._pool = pool
        try:
            with compute_threads(1):  # the backbone runs here, between the workers' batches (bench/features.py)
                yield
        finally:
            self._pool = None
            pool.shutdown(cancel_futures=True)

    def _batches(self, paths: list[str], batch_size: int) -> list[tuple[list[str], object]]:
        """The pass's batches, each with its prior features already on their way in the workers (a future; None
        outside `parallel()`)."""
        pool = getattr(self, "_pool", None)
        batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        return [(b, pool.submit(_prior_features, b, self.crop_margin) if pool else None) for b in batches]


class PriorExtractor(_PriorWorkers):
    """The fine-tune recipe's fixed features: the face prior alone, (N, P) per file, computed once and cached by
    FeatureCache like the features recipe's (they do not change while the backbone trains)."""

    def __init__(self, crop_margin: float | None):
        from ..faces.prior import FEATURE_DIM

        if crop_margin is None:
            raise InvalidInput(NEEDS_CROPS)
        self.crop_margin, self.prior_dim, self.cnn_dim = crop_margin, FEATURE_DIM, 0
        self.identity = "prior-" + hashlib.sha1(json.dumps(["prior", crop_margin, _prior_version()]).encode()) \
            .hexdigest()[:12]

    def extract(self, paths: list[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
        out, done = [], 0
        for batch, ahead in self._batches(paths, batch_size):
            out.append(ahead.result() if ahead is not None else self.extract_images([load_rgb(p) for p in batch]))
            done += len(batch)
            if progress:
                progress("face prior", done, len(paths))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.prior_dim), np.float32)

    def extract_images(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.prior_dim), np.float32)
        return np.asarray(self.prior.features(images), np.float32)


def block_names(text: str | None) -> list[str]:
    """`model.pool_blocks` as a list of module names (none: []; `auto` is resolved first: auto_pool_blocks)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _meta_backbone(backbone_name: str) -> torch.nn.Module:
    """The classifier-less timm network built on the meta device: its modules and shapes, no weights, no memory."""
    import timm

    with torch.device("meta"):
        return timm.create_model(backbone_name, pretrained=False, num_classes=0).eval()


@functools.lru_cache(maxsize=64)
def auto_pool_blocks(backbone_name: str, image_size: int) -> str | None:
    """What `model.pool_blocks=auto` means for a backbone: for timm networks built of a `blocks` sequence of
    feature-map stages (EfficientNet, MobileNet and their kin), the third- and second-last stages (Lite0:
    blocks.4 at stride 16 and blocks.5 at stride 32), else none (a ViT's blocks give tokens, a ResNet has no
    `blocks`). The network is built on the meta device and probed by PooledBackbone (_pool_blocks_problem): no
    weights, no memory; about half a second on a CPU, so each answer is kept for the process (a config is resolved
    several times per command, and `ablate` resolves dozens)."""
    try:
        net = _meta_backbone(backbone_name)
        blocks = getattr(net, "blocks", None)
        if not isinstance(blocks, torch.nn.Sequential) or len(blocks) < 3:
            return None
        names = (f"blocks.{len(blocks) - 3}", f"blocks.{len(blocks) - 2}")
        # check_pool_blocks's own probe (kept per process): resolving and then validating the names probes once
        return None if _pool_blocks_problem(backbone_name, names, image_size) else ",".join(names)
    except Exception:  # noqa: BLE001 - a network that cannot be probed simply gets no pooled blocks
        return None


def check_pool_blocks(backbone_name: str, pool_blocks: str | None, image_size: int) -> None:
    """Named `model.pool_blocks` must be modules of the backbone that give feature maps: checked with the config,
    on the meta device, before any split, run or feature pass is made (one-line InvalidInput otherwise)."""
    if pool_blocks in (None, "auto"):
        return
    problem = _pool_blocks_problem(backbone_name, tuple(block_names(pool_blocks)), image_size)
    if problem:
        raise InvalidInput(problem)


@functools.lru_cache(maxsize=64)
def _pool_blocks_problem(backbone_name: str, blocks: tuple[str, ...], image_size: int) -> str | None:
    """Why these blocks of this backbone give no pooled features (PooledBackbone's message), or None: probed once
    per process, like auto_pool_blocks."""
    try:
        PooledBackbone(_meta_backbone(backbone_name), list(blocks), image_size)
    except InvalidInput as exc:
        return str(exc)
    return None


class PooledBackbone(torch.nn.Module):
    """A classifier-less timm backbone whose pooled features are followed by the average-pooled outputs of some of
    its inner modules (`model.pool_blocks`): one forward pass, one (N, D) tensor, so the ONNX export, eval, predict
    and `maskkit export` see one network. The hooks live only while a forward runs."""

    def __init__(self, net: torch.nn.Module, blocks: list[str], image_size: int = 224):
        super().__init__()
        self.net, self.blocks = net, list(blocks)
        modules = dict(net.named_modules())
        for name in self.blocks:
            if not name or name not in modules:
                from difflib import get_close_matches

                close = get_close_matches(name, [m for m in modules if m], n=1)
                raise InvalidInput(f"config model.pool_blocks: the backbone has no module {name!r}"
                                   + (f" (did you mean {close[0]!r}?)" if close else ""))
        self._modules_by_name = [modules[name] for name in self.blocks]
        self.num_features = int(net.num_features)
        if self.blocks:
            with torch.no_grad():
                param = next(net.parameters(), None)
                probe = self.forward(torch.zeros(1, 3, image_size, image_size,
                                                 device=param.device if param is not None else None))
            self.num_features = int(probe.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return self.net(x)
        seen: dict[int, torch.Tensor] = {}
        handles = [m.register_forward_hook(lambda _m, _a, out, k=k: seen.__setitem__(k, out))
                   for k, m in enumerate(self._modules_by_name)]
        try:
            final = self.net(x)
        finally:
            for h in handles:
                h.remove()
        pooled = [final]
        for k, name in enumerate(self.blocks):
            out = seen.get(k)
            if not isinstance(out, torch.Tensor) or out.ndim != 4:
                raise InvalidInput(f"config model.pool_blocks: {name!r} does not give a feature map (N, C, H, W) "
                                   f"in this backbone ({'no output' if out is None else tuple(getattr(out, 'shape', ()))})")
            pooled.append(out.float().mean((2, 3)).to(final.dtype))
        return torch.cat(pooled, 1)


class FeatureExtractor(_PriorWorkers):
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
            raise InvalidInput(NEEDS_CROPS)
        self.crop_margin = crop_margin
        cfg = {**model_cfg, "drop_rate": 0.0, "freeze_stages": 0}
        if backbone_state is not None:
            cfg["pretrained"] = "none"
        self.net, self.weights_source = backbone(model_cfg["backbone"], 0, cfg)
        if backbone_state is not None:
            self.net.load_state_dict(backbone_state)
            self.weights_source = "checkpoint"
        self.net.to(device).eval()
        pool = model_cfg.get("pool_blocks")
        self.blocks = block_names(auto_pool_blocks(model_cfg["backbone"], image_size) if pool == "auto" else pool)
        self.pooled = PooledBackbone(self.net, self.blocks, image_size).eval()  # the net, and its pooled blocks
        self.cnn_dim = int(self.pooled.num_features)
        self.prior_dim = 0
        if self.prior_kind == "face":
            from ..faces.prior import FEATURE_DIM

            self.prior_dim = FEATURE_DIM
        # what the features depend on (not where the weights came from: training and a run's checkpoint share it)
        self.identity = hashlib.sha1(json.dumps(
            [model_cfg["backbone"], _state_digest(self.net), image_size, self.prior_kind, crop_margin,
             _prior_version() if self.prior_kind == "face" else None] + ([self.blocks] if self.blocks else [])
        ).encode()).hexdigest()[:16]

    @torch.no_grad()
    def _cnn(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).to(self.device)
        x = (x.float() - MEAN.to(self.device)) / STD.to(self.device)
        runtime = getattr(self, "_onnx", None)
        if runtime is not None:  # a long CPU pass: the image and its mirror in one ONNX Runtime call
            both = runtime(torch.cat([x, x.flip(-1)]).numpy())
            return both[:len(x)], both[len(x):]
        return self.pooled(x).float().cpu().numpy(), self.pooled(x.flip(-1)).float().cpu().numpy()

    @contextmanager
    def parallel(self, images: int, prior_workers: bool = True):
        """As `_PriorWorkers.parallel`, and the pass's length chooses the backbone's runtime for all its shards."""
        self._pass_images = images
        try:
            with super().parallel(images, prior_workers):
                yield
        finally:
            self._pass_images = 0

    def _runtime_for(self, images: int):
        """The backbone's runtime for a pass over `images` files (onnx_backbone: ONNX Runtime for long CPU passes),
        made once per thread count."""
        from . import onnx_backbone

        if not onnx_backbone.wanted(self.device, images):
            return None
        threads = torch.get_num_threads()
        made = getattr(self, "_onnx_made", {})
        if threads not in made:
            made[threads] = onnx_backbone.make(self.pooled, self.image_size, threads)
            self._onnx_made = made
        return made[threads]

    def extract(self, paths: list[str], batch_size: int = 32, progress: Progress | None = None,
                prior: np.ndarray | None = None) -> np.ndarray:
        """(N, 2, D) float32: [plain, mirrored] features of each file. `prior`: the files' (N, P) prior features
        when already known (FeatureCache reads them from the prior's own cache); else, inside `parallel()`, the
        prior's part of each batch is computed in the worker processes while this process runs the CNN."""
        self._onnx = self._runtime_for(max(len(paths), getattr(self, "_pass_images", 0)))
        try:
            return self._extract(paths, batch_size, progress, prior)
        finally:
            self._onnx = None

    def _extract(self, paths: list[str], batch_size: int, progress: Progress | None,
                 prior: np.ndarray | None = None) -> np.ndarray:
        out, done = [], 0
        batches = self._batches(paths, batch_size) if prior is None else [
            (paths[i:i + batch_size], None) for i in range(0, len(paths), batch_size)]
        for batch, ahead in batches:
            images = [load_rgb(p) for p in batch]
            if prior is not None:
                known = prior[done:done + len(batch)]
            else:
                known = ahead.result() if ahead is not None else None
            out.append(self.extract_images(images, known))
            done += len(batch)
            if progress:
                progress("features", done, len(paths))
        return np.concatenate(out) if out else np.zeros((0, 2, self.cnn_dim + self.prior_dim), np.float32)

    def extract_images(self, images: list[np.ndarray], prior: np.ndarray | None = None) -> np.ndarray:
        """(N, 2, D) float32 features of RGB uint8 images (each as read from its file); `prior`: their prior
        features when already computed (in the workers)."""
        out = np.zeros((len(images), 2, self.cnn_dim + self.prior_dim), np.float32)
        if not images:
            return out
        plain, mirrored = self._cnn(np.stack([prepare_image(im, self.image_size) for im in images]))
        out[:, 0, :self.cnn_dim], out[:, 1, :self.cnn_dim] = plain, mirrored
        if self.prior_dim:
            out[:, :, self.cnn_dim:] = (self.prior.features(images) if prior is None else prior)[:, None, :]
        return out


PARALLEL_MIN_IMAGES = 128  # below this, starting worker processes costs more than it saves
_WORKER_PRIOR = None


def _prior_worker_init(margin: float) -> None:
    global _WORKER_PRIOR
    import torch

    torch.set_num_threads(1)
    from ..faces.prior import shared_prior

    _WORKER_PRIOR = shared_prior(margin)


def _prior_features(paths: list[str], margin: float) -> np.ndarray:
    """In a worker: the face prior's features of these files (as read by the one image reader)."""
    prior = _WORKER_PRIOR
    if prior is None:  # pragma: no cover - a worker always has run its initializer
        from ..faces.prior import shared_prior

        prior = shared_prior(margin)
    return prior.features([load_rgb(p) for p in paths])


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


SHARD_SIZE = 256  # images per cache shard: a killed feature pass loses at most this many


class FeatureCache:
    """Features of files by extractor: shards of SHARD_SIZE images under features_<identity>/, each written
    atomically as soon as it is computed, so a killed pass keeps every finished shard and a rerun computes only
    what is missing (an older single-file cache, features_<identity>.npz, is still read). `best_effort`: a shard
    that cannot be written (a read-only disk, a full one, a file where the folder goes) is kept in memory only and
    no further writes are tried, so the caller gets every feature, each computed once; otherwise that is an error."""

    def __init__(self, directory: Path, extractor: FeatureExtractor, best_effort: bool = False):
        self.folder = Path(directory) / f"features_{extractor.identity}"
        self.legacy = Path(directory) / f"features_{extractor.identity}.npz"
        self.extractor = extractor
        self.best_effort = best_effort

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _load(self) -> dict[str, np.ndarray]:
        known: dict[str, np.ndarray] = {}
        for path in ([self.legacy] if self.legacy.is_file() else []) + self.shards():
            try:
                with np.load(path, allow_pickle=False) as data:
                    known.update(zip(data["keys"].tolist(), data["features"]))
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is computed again
        return known

    def features(self, paths: list[str], progress: Progress | None = None) -> np.ndarray:
        keys = [_file_key(p) for p in paths]
        known = self._load()
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            prior = self._prior_part([paths[i] for i in missing], progress)
            done, writable = 0, True

            def step(what, n, total):
                if progress:
                    progress(what, done + n, len(missing))

            with self.extractor.parallel(len(missing), prior_workers=prior is None):
                for start in range(0, len(missing), SHARD_SIZE):
                    chunk = missing[start:start + SHARD_SIZE]
                    extra = {"prior": prior[start:start + len(chunk)]} if prior is not None else {}
                    new = self.extractor.extract([paths[i] for i in chunk], progress=step, **extra)
                    writable = writable and self._save([keys[i] for i in chunk], new)
                    for i, f in zip(chunk, new):
                        known[keys[i]] = f
                    done += len(chunk)
        return np.stack([known[k] for k in keys])

    def _save(self, keys: list[str], features: np.ndarray) -> bool:
        """Write one shard (the folder made once something is computed: no empty folders); False when it cannot be
        written and the cache is best-effort."""
        import time

        from ..errors import MaskkitError
        from ..files import atomic_path

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = self.folder / f"shard-{time.time_ns()}-{os.getpid()}.npz"
            with atomic_path(shard, "feature cache") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, keys=np.array(keys), features=features)
            return True
        except (OSError, MaskkitError):
            if not self.best_effort:
                raise
            return False

    def _prior_part(self, paths: list[str], progress: Progress | None) -> np.ndarray | None:
        """A backbone-and-prior extractor's prior features of `paths`, through the prior's own cache
        (features_prior-*, shared with the fine-tune recipe): computed once per file whatever the backbone, so a
        second backbone (model.blend_backbones) or a changed pool_blocks runs only its CNN. None for extractors
        without both parts."""
        if not (isinstance(self.extractor, FeatureExtractor) and self.extractor.prior_dim and self.extractor.cnn_dim):
            return None
        return FeatureCache(self.folder.parent, PriorExtractor(self.extractor.crop_margin),
                            self.best_effort).features(paths, progress)
