"""The training loop: a run on a catalog view (and a split's fold), with its folder and catalog row.

runs/<name>/ holds args.yaml (the effective config), metrics.csv (one row per epoch), best.pt and
last.pt, val_probs.npz (validation probabilities of the best epoch), curves.png and TensorBoard events.
`resume_run` continues an interrupted run exactly: model, optimizer, scheduler, scaler, epoch, and the
per-epoch seeds that fix data order and augmentation.
"""

from __future__ import annotations

import json
import math
import os
import socket
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Run, Split, View, utcnow
from .. import labels as L
from ..errors import Conflict, InvalidInput, NotFound
from ..progress import Progress
from ..files import atomic_path, output_dir
from .callbacks import METRIC_KEYS
from .config import complete, load_config, save_config, validate
from . import accel
from .data import DecodedCache, ImageDataset, collate_batch, mix_batch, prepare_batch, view_samples
from .losses import Criterion, balanced_weights
from .metrics import evaluate
from .models import create_model
from ..evaluate.decision import apply_bias

EpochCallback = Callable[[dict], None]


# ---------------------------------------------------------------- distributed helpers


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _broadcast(obj, rank: int, world: int):
    if world == 1:
        return obj
    import torch.distributed as dist

    holder = [obj if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _gather(arrays: list[np.ndarray], world: int) -> list[np.ndarray]:
    if world == 1:
        return arrays
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, arrays)
    return [np.concatenate([g[i] for g in gathered]) for i in range(len(arrays))]


# ---------------------------------------------------------------- preparing a run


@dataclass
class RunResult:
    """What a finished (or resumed) run reports."""

    run: str
    best_epoch: int | None
    best_metric: float | None
    folder: str


@dataclass
class CrossValidation:
    """Every fold's run and the out-of-fold probabilities file."""

    runs: list[RunResult]
    oof: str


@dataclass
class Job:
    cfg: dict
    view: str
    view_id: int
    view_hash: str
    split: str
    split_id: int
    fold: int
    samples: list
    train_rows: list[int]
    val_rows: list[int]
    run_dir: Path | None = None
    run_name: str | None = None
    extra: dict = field(default_factory=dict)


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"train.device={name} but torch sees no CUDA device")
    return torch.device(name)


def default_split(catalog: Catalog, view: str, seed: int) -> str:
    """The view's holdout split (20% of people for validation), made on first use."""
    from ..datasets.splits import make_split

    name = f"{view}-holdout"
    with catalog.session() as session:
        exists = session.execute(select(Split.id).where(Split.name == name)).first()
    if not exists:
        make_split(catalog, name, view, val=0.2, seed=seed)
    return name


def prepare(catalog: Catalog, view: str, split: str | None, fold: int | None, cfg: dict, *,
            make_split: bool = True, allow_stale: bool = False) -> Job:
    """The rows a run trains and validates on. Only training (make_split) may make the default holdout split;
    evaluation reads splits, never writes them."""
    from ..datasets.splits import fold_of, get_split
    from ..datasets.views import get_view

    v = get_view(catalog, view)
    samples, view_hash = view_samples(catalog, view, allow_stale=allow_stale)
    if split is None and not make_split:
        raise InvalidInput(f"no split given for view {view!r}")
    split = split or default_split(catalog, view, cfg["train"]["seed"])
    s = get_split(catalog, split)
    if s.view_id != v.id:
        raise InvalidInput(f"split {split!r} was made for another view; make one for {view!r} (maskkit split)")
    if s.view_hash != view_hash:
        raise Conflict(f"view {view!r} was materialized again after split {split!r} was made: make a split of the "
                       f"view as it is now (maskkit split NEW --view {view} --folds K, or train --view {view} --folds K, "
                       f"which names its own); runs on {split!r} keep theirs")
    if s.kind == "holdout":
        fold = 1 if fold is None else fold
        if fold != 1:
            raise InvalidInput(f"split {split!r} is a holdout: its validation part is fold 1")
    elif fold is None:
        raise InvalidInput(f"split {split!r} has {s.folds} folds: give --fold K (0..{s.folds - 1}) or --fold all")
    elif not 0 <= fold < s.folds:
        raise InvalidInput(f"--fold {fold} is outside 0..{s.folds - 1}")
    folds = fold_of(catalog, split)
    missing = {smp.profile_id for smp in samples if smp.profile_id not in folds}
    if missing:
        raise InvalidInput(f"{len(missing)} people of view {view!r} are in no fold of {split!r}: make the split again")
    val_rows = [i for i, smp in enumerate(samples) if folds[smp.profile_id] == fold]
    train_rows = [i for i, smp in enumerate(samples) if folds[smp.profile_id] != fold]
    val_rows, train_rows = _scored_and_trained(catalog, samples, val_rows, train_rows, cfg)
    if not train_rows or not val_rows:
        raise InvalidInput(f"fold {fold} of {split!r} leaves no training or no validation images")
    return Job(cfg, view, v.id, view_hash, split, s.id, fold, samples, train_rows, val_rows)


def _scored_and_trained(catalog: Catalog, samples: list, val_rows: list[int], train_rows: list[int],
                        cfg: dict) -> tuple[list[int], list[int]]:
    """Validation scores real people only (a synthetic person is a copy or a transform of a real one: it
    trains, it is never scored, unless the view has nothing else); data.train_exclude_ages leaves those ages
    out of training only."""
    from ..catalog.models import Profile
    from .config import excluded_ages

    with catalog.session() as session:
        people = {pid: (age, origin) for pid, age, origin in session.execute(
            select(Profile.id, Profile.age, Profile.origin))}
    real_val = [i for i in val_rows if people[samples[i].profile_id][1] != "synthetic"]
    val_rows = real_val or val_rows
    ages = excluded_ages(cfg["data"]["train_exclude_ages"])
    if ages:
        train_rows = [i for i in train_rows if not ages[0] <= people[samples[i].profile_id][0] <= ages[1]]
    return val_rows, train_rows


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run is marked interrupted and keeps its last finished epoch."""

    def __init__(self, run: str | None, resumable: bool = True):
        super().__init__(run)
        self.run = run
        self.resumable = resumable  # False: stopped before its first epoch ended (no last.pt)


def names_taken(catalog: Catalog) -> set[str]:
    """Run and ensemble names share one namespace (eval, submit and ensemble take either)."""
    from ..catalog.models import Ensemble

    with catalog.session() as session:
        return set(session.execute(select(Run.name)).scalars()) | set(session.execute(select(Ensemble.name)).scalars())


def check_new_name(catalog: Catalog, name: str, what: str = "--name") -> str:
    """A name for a new run or ensemble: safe as a file name (names.check_name) and not taken yet."""
    from ..errors import Conflict
    from ..names import check_name

    check_name(name, what)
    if name in names_taken(catalog):
        raise Conflict(f"{name!r} already names a run or an ensemble; choose another {what}")
    return name


def next_run_name(catalog: Catalog, runs_dir: Path) -> str:
    names = names_taken(catalog)
    n = 1
    while f"{n:04d}" in names or (runs_dir / f"{n:04d}").exists():
        n += 1
    return f"{n:04d}"


# ---------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, catalog: Catalog, job: Job, runs_dir: Path, progress: Progress | None = None,
                 on_epoch: EpochCallback | None = None, callbacks: list | None = None):
        from .callbacks import from_config

        self.catalog, self.job, self.cfg = catalog, job, job.cfg
        self.callbacks = from_config(job.cfg) if callbacks is None else callbacks
        self.runs_dir = Path(runs_dir)
        self.progress, self.on_epoch = progress, on_epoch
        self.rank, self.world, self.local_rank = dist_info()
        device = choose_device(self.cfg["train"]["device"])
        if device.type == "cuda" and self.world > 1:
            device = torch.device(f"cuda:{self.local_rank}")
        self.device = device
        self.workers = accel.loader_workers(self.cfg["data"]["workers"])
        self._loaders: dict = {}
        if self.world > 1:
            _init_distributed(device)

    # -- set-up

    def _seed(self, value: int) -> None:
        random.seed(value)
        np.random.seed(value % (2**32))
        torch.manual_seed(value)

    def _loader(self, rows: list[int], train: bool, epoch: int) -> torch.utils.data.DataLoader:
        """The loader for training or validation rows, made once per run (its workers persist across
        epochs); each epoch reseeds its generator, so the epoch's order is the same however it is reached."""
        cfg = self.cfg
        seed = cfg["train"]["seed"] * 1000 + epoch * 10 + (1 if train else 2)
        key = (train, len(rows), rows[0] if rows else None)
        made = self._loaders.get(key)
        if made is None:
            ds = ImageDataset(self.job.samples, rows, cfg["data"]["image_size"], self.cache)
            g = torch.Generator()
            sampler = None
            if train and cfg["data"]["weighted_sampler"]:  # training only: validation is never resampled
                labels = np.array([self.job.samples[r].label for r in rows])
                counts = np.bincount(labels, minlength=L.NUM_CLASSES).astype(float)
                weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
                sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(rows) // self.world,
                                                                 replacement=True, generator=g)
            elif train and self.world > 1:  # validation rows are sharded by the caller, without padding
                sampler = torch.utils.data.distributed.DistributedSampler(
                    ds, num_replicas=self.world, rank=self.rank, shuffle=train, seed=cfg["train"]["seed"])
            loader = torch.utils.data.DataLoader(
                ds, batch_size=cfg["data"]["batch_size"], shuffle=train and sampler is None, sampler=sampler,
                num_workers=self.workers, generator=g, drop_last=False, worker_init_fn=_quiet_worker,
                collate_fn=collate_batch, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers else None)
            made = self._loaders[key] = (loader, g, sampler)
        loader, g, sampler = made
        g.manual_seed(seed + (self.rank if train and cfg["data"]["weighted_sampler"] else 0))
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            sampler.set_epoch(epoch)
        return loader

    def _cache_dir(self) -> Path:
        return Path(self.cfg["data"]["cache_dir"] or self.runs_dir / "cache")

    def _prepare_inputs(self) -> None:
        """The decoded-image cache every epoch reads."""
        cfg = self.cfg
        self.cache = None
        if cfg["data"]["cache"]:
            self.cache = DecodedCache(self._cache_dir(), self.job.samples, self.job.view_hash, cfg["data"]["image_size"])
            if self.rank == 0:
                self.cache.build(self.progress, workers=max(2, cfg["data"]["workers"]))
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()

    def _make_model(self) -> torch.nn.Module:
        return create_model({**self.cfg["model"]})

    def _checkpoint_extra(self) -> dict:
        return {}

    def _build(self) -> None:
        cfg = self.cfg
        self._seed(cfg["train"]["seed"])
        self._prepare_inputs()
        self.model = self._make_model().to(self.device)
        self.weights_source = getattr(self.model, "weights_source", "?")
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        weights = None
        if cfg["loss"]["class_weights"] == "balanced":
            weights = balanced_weights([self.job.samples[r].label for r in self.job.train_rows], cfg["model"]["head"])
        self.criterion = Criterion(cfg["loss"], weights)
        self.decision_bias = logit_adjustment([self.job.samples[r].label for r in self.job.train_rows],
                                              cfg["loss"]["logit_adjust"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg["optim"]
        self.optim_name = optimizer_name(cfg)
        if self.optim_name == "lbfgs":
            self.optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=LBFGS_ITERATIONS, history_size=20,
                                               line_search_fn="strong_wolfe")
        elif self.optim_name == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
        else:
            self.optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                                             weight_decay=o["weight_decay"], nesterov=True)
        per_rank = math.ceil(len(self.job.train_rows) / self.world)
        self.steps_per_epoch = math.ceil(per_rank / cfg["data"]["batch_size"])
        if cfg["train"]["max_batches"]:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg["train"]["max_batches"])
        total = max(1, self.steps_per_epoch * cfg["schedule"]["epochs"])
        warm = int(cfg["schedule"]["warmup_epochs"] * self.steps_per_epoch)
        floor = cfg["schedule"]["min_lr"] / o["lr"]

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # lbfgs keeps its step length (its line search sets it)
            self.optimizer, factor if self.optim_name != "lbfgs" else _constant)
        self.dtype = accel.autocast_dtype(cfg["train"]["precision"], self.device)
        self.scaler = accel.grad_scaler(self.device, self.dtype)
        self.layout_last = accel.channels_last(cfg["train"]["channels_last"], self.device, self.model)
        if self.layout_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_net = accel.compile_model(self.net, cfg["train"]["compile"])  # the training forward

    # -- one epoch

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.net.train()
        self._seed(cfg["train"]["seed"] * 1000 + epoch)  # augmentation in the main process is reproducible too
        mix_gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 7919 + epoch)
        aug_gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 104729 + epoch * 31 + self.rank)
        loader = self._loader(self.job.train_rows, True, epoch)
        total, count = 0.0, 0
        for step, (x, y, _) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            x, y = accel.to_device(x, self.device, self.layout_last), y.to(self.device, non_blocking=True)
            x = accel.augment_geometry_batch(x, cfg["augment"], aug_gen)
            x = prepare_batch(x, cfg["augment"])
            target = y
            if cfg["augment"]["cutmix"] > 0 or cfg["augment"]["mixup"] > 0:
                x, target = mix_batch(x, y, cfg["augment"], mix_gen)
            with accel.autocast(self.device, self.dtype):
                out = self.step_net(x)
                loss = self.criterion(accel.fp32(out), target)
                if hasattr(self.model, "sharing_penalty"):
                    loss = loss + self.model.sharing_penalty()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg["train"]["grad_clip"] > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["train"]["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
            if self.progress and self.rank == 0:
                self.progress(f"epoch {epoch + 1}", step + 1, self.steps_per_epoch)
        return total / max(1, count)

    @torch.no_grad()
    def validate(self) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        self.net.eval()
        rows = self.job.val_rows[self.rank::self.world]
        loader = self._loader(rows, False, 0)
        probs, labels, idx, losses = [], [], [], []
        for x, y, row in loader:
            x, y = prepare_batch(accel.to_device(x, self.device, self.layout_last)), y.to(self.device)
            with accel.autocast(self.device, self.dtype):  # validated in the precision it trains in
                out = accel.fp32(self.model(x))
            losses.append(float(self.criterion(out, y)) * len(x))
            probs.append(self.model.probs(out).cpu().numpy())
            labels.append(y.cpu().numpy())
            idx.append(row.numpy())
        arrays = [np.concatenate(probs), np.concatenate(labels), np.concatenate(idx), np.array([sum(losses)])]
        probs, labels, idx, loss_sum = _gather(arrays, self.world)
        order = np.argsort(idx)
        probs, labels, idx = apply_bias(probs[order], self.decision_bias), labels[order], idx[order]
        metrics = evaluate(probs, labels)
        metrics["val_loss"] = float(loss_sum.sum() / max(1, len(labels)))
        return metrics, probs, labels, idx

    # -- the run

    def _metric(self, metrics: dict) -> float:
        name = self.cfg["train"]["metric"]
        key = name.removeprefix("val_")
        if name == "val_loss":
            return -metrics["val_loss"]
        if key not in metrics:
            raise InvalidInput(f"train.metric {name!r} is not a validation metric "
                               f"(val_loss, {', '.join('val_' + k for k in METRIC_KEYS)})")
        return metrics[key]

    def run(self, resume: dict | None = None) -> RunResult:
        job, cfg = self.job, self.cfg
        main = self.rank == 0
        run_dir = job.run_dir
        callbacks: list = []
        start_epoch, best, best_epoch, bad = 0, -math.inf, None, 0
        status = "interrupted"
        try:
            self._build()  # inside: a start that fails is recorded as failed, Ctrl-C as interrupted
            if resume is not None:
                self.model.load_state_dict(resume["model"])
                self.optimizer.load_state_dict(resume["optimizer"])
                self.scheduler.load_state_dict(resume["scheduler"])
                self.scaler.load_state_dict(resume["scaler"])
                start_epoch, best, best_epoch, bad = (resume["epoch"] + 1, resume["best"], resume["best_epoch"],
                                                      resume["bad"])
            callbacks = self.callbacks if main else []
            for cb in callbacks:
                cb.on_run_start(run_dir, job.run_name, cfg)
            for epoch in range(start_epoch, cfg["schedule"]["epochs"]):
                started = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                metrics, probs, labels, idx = self.validate()
                metrics.update(epoch=epoch + 1, train_loss=train_loss, lr=self.optimizer.param_groups[0]["lr"],
                               seconds=time.perf_counter() - started)
                score = self._metric(metrics)
                improved = score > best
                if improved:
                    best, best_epoch, bad = score, epoch + 1, 0
                else:
                    bad += 1
                metrics["best"] = improved
                if main:
                    for cb in callbacks:
                        cb.on_epoch_end(run_dir, metrics)
                    if improved:
                        self._save_best(run_dir, epoch, probs, labels, idx, metrics)
                    with atomic_path(run_dir / "last.pt", "checkpoint") as tmp:
                        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                                    "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad": bad, "config": cfg},
                                   tmp)
                    self._update_row(status="running", epochs_done=epoch + 1, best_epoch=best_epoch,
                                     best_metric=best if cfg["train"]["metric"] != "val_loss" else -best)
                if self.on_epoch and main:
                    self.on_epoch(metrics)
                patience = cfg["train"]["early_stopping"]
                if patience and bad >= patience:
                    metrics["stopped_early"] = True
                    break
            status = "finished"
        except KeyboardInterrupt:
            raise RunInterrupted(job.run_name, (Path(job.run_dir) / "last.pt").is_file()) from None
        except Exception:
            status = "failed"
            raise
        finally:
            if main:
                self._update_row(status=status, finished_at=utcnow() if status != "interrupted" else None)
                for cb in callbacks:
                    cb.on_run_end(run_dir, status)
        return RunResult(job.run_name, best_epoch, best if cfg["train"]["metric"] != "val_loss" else -best, str(run_dir))

    def _save_best(self, run_dir, epoch, probs, labels, idx, metrics) -> None:
        with atomic_path(run_dir / "best.pt", "checkpoint") as tmp:
            torch.save({"model": self.model.state_dict(), "config": self.cfg, "epoch": epoch + 1,
                        "metrics": {k: v for k, v in metrics.items() if k != "class_f1"},
                        "decision_bias": self.decision_bias, **self._checkpoint_extra()}, tmp)
        samples = self.job.samples
        with atomic_path(run_dir / "val_probs.npz", "validation probabilities") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, probs=probs, labels=labels, image_ids=np.array([samples[i].image_id for i in idx]),
                     profile_ids=np.array([samples[i].profile_id for i in idx]), epoch=epoch + 1)

    def _update_row(self, **values) -> None:
        with self.catalog.session() as session:
            run = session.execute(select(Run).where(Run.name == self.job.run_name)).scalars().one()
            for k, v in values.items():
                setattr(run, k, v)
            session.add(run)
            session.commit()


class FeatureTrainer(Trainer):
    """`model.freeze_backbone=true`: the backbone (and the face prior) run once per image into a feature
    cache; epochs train the heads only. Flip augmentation picks the mirrored image's features; validation
    and inference average the predictions of both."""

    def _prepare_inputs(self) -> None:
        from .features import FeatureCache, FeatureExtractor

        self.cache = None
        margin = view_crop_margin(self.catalog, self.job.view_id)
        self.extractor = FeatureExtractor(self.cfg["model"], self.cfg["data"]["image_size"], margin, self.device)
        bank = FeatureCache(self._cache_dir(), self.extractor)
        if self.world > 1 and self.rank != 0:
            import torch.distributed as dist

            dist.barrier()
        features = bank.features([s.path for s in self.job.samples], self.progress if self.rank == 0 else None)
        if self.world > 1 and self.rank == 0:
            import torch.distributed as dist

            dist.barrier()
        self.features = torch.from_numpy(features)
        self.labels = torch.tensor([s.label for s in self.job.samples])

    def _make_model(self) -> torch.nn.Module:
        from .models import FeatureHeads

        model = FeatureHeads(self.cfg["model"], self.features.shape[-1])
        model.set_scale(self.features[self.job.train_rows].reshape(-1, self.features.shape[-1]))
        return model

    def _checkpoint_extra(self) -> dict:
        return {"backbone": self.extractor.net.state_dict(), "crop_margin": self.extractor.crop_margin}

    def _penalty(self) -> torch.Tensor | float:
        l2 = self.cfg["model"]["head_l2"]
        if not l2:
            return 0.0
        return l2 * sum(head.weight.pow(2).sum() for head in self.model.heads.values())

    def _full_batch_epoch(self) -> float:
        """One lbfgs step over every training image and its mirror (no dropout: the line search needs a
        deterministic loss)."""
        rows = torch.tensor(self.job.train_rows)
        if self.cfg["data"]["weighted_sampler"]:  # this epoch's full batch drawn inversely to class frequency
            gen = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1000 + self._epoch * 10 + 1)
            counts = torch.bincount(self.labels[rows], minlength=L.NUM_CLASSES).double()
            rows = rows[torch.multinomial(1.0 / counts[self.labels[rows]], len(rows), True, generator=gen)]
        key = rows.numpy().tobytes()
        if getattr(self, "_batch_key", None) != key:  # standardised once, not in every line-search step
            with torch.no_grad():
                self._batch = self.model.standardize(self.features[rows].reshape(-1, self.features.shape[-1])
                                                     .to(self.device)).contiguous()
            self._batch_key = key
        z = self._batch
        y = self.labels[rows].repeat_interleave(2).to(self.device)
        self.net.eval()
        last = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.criterion(self.model.logits(z), y)
            last["loss"] = float(loss.detach())
            loss = loss + self._penalty()
            loss.backward()
            return loss

        self.optimizer.step(closure)
        return last.get("loss", float("nan"))

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        if self.optim_name == "lbfgs":
            self._epoch = epoch
            loss = self._full_batch_epoch()
            if self.progress and self.rank == 0:
                self.progress(f"epoch {epoch + 1}", 1, 1)
            return loss
        self.net.train()
        gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 1000 + epoch * 10 + 1)
        rows = torch.tensor(self.job.train_rows)
        if cfg["data"]["weighted_sampler"]:  # training only: validation is never resampled
            counts = torch.bincount(self.labels[rows], minlength=L.NUM_CLASSES).double()
            order = rows[torch.multinomial(1.0 / counts[self.labels[rows]], len(rows), True, generator=gen)]
        else:
            order = rows[torch.randperm(len(rows), generator=gen)]
        order = order[self.rank::self.world]
        flips = (torch.rand(len(order), generator=gen) < cfg["augment"]["hflip"]).long()
        total, count, bs = 0.0, 0, cfg["data"]["batch_size"]
        steps = min(self.steps_per_epoch, math.ceil(len(order) / bs))
        for step in range(steps):
            idx, flip = order[step * bs:(step + 1) * bs], flips[step * bs:(step + 1) * bs]
            x = self.features[idx, flip].to(self.device)
            y = self.labels[idx].to(self.device)
            target = y
            if cfg["augment"]["mixup"] > 0:
                x, target = mix_features(x, y, cfg["augment"]["mixup"], gen)
            loss = self.criterion(self.net(x), target) + self._penalty()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["train"]["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["train"]["grad_clip"])
            self.optimizer.step()
            self.scheduler.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        if self.progress and self.rank == 0:
            self.progress(f"epoch {epoch + 1}", steps, steps)
        return total / max(1, count)

    @torch.no_grad()
    def validate(self) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        self.net.eval()
        rows = np.array(self.job.val_rows)
        x = self.features[rows].to(self.device)
        y = self.labels[rows].to(self.device)
        plain, mirrored = self.model(x[:, 0]), self.model(x[:, 1])
        probs = apply_bias(((self.model.probs(plain) + self.model.probs(mirrored)) / 2).cpu().numpy(),
                           self.decision_bias)
        loss = float(self.criterion(plain, y))
        metrics = evaluate(probs, y.cpu().numpy())
        metrics["val_loss"] = loss
        return metrics, probs, y.cpu().numpy(), rows


def logit_adjustment(train_labels: list[int], tau: float) -> list[float] | None:
    """loss.logit_adjust: per-class offsets -tau x log(training class frequency) (add-one smoothed), added to the
    log-probabilities of every prediction (Menon et al., "Long-tail learning via logit adjustment")."""
    if not tau:
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=L.NUM_CLASSES) + 1.0
    return (-tau * np.log(counts / counts.sum())).tolist()


def mix_features(x: torch.Tensor, y: torch.Tensor, probability: float, generator: torch.Generator):
    """Mixup on feature vectors (with this probability per batch); returns (N,18) soft targets."""
    target = torch.nn.functional.one_hot(y, L.NUM_CLASSES).float()
    if len(x) < 2 or float(torch.rand((), generator=generator)) >= probability:
        return x, target
    perm = torch.randperm(len(x), generator=generator)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def view_crop_margin(catalog: Catalog, view_id: int) -> float | None:
    """The face-crop margin of the variant a view reads (None: not a face-crop variant)."""
    from ..faces.preprocess import view_crop_params

    crop = view_crop_params(catalog, view_id)
    return crop.margin if crop is not None else None


def make_trainer(catalog: Catalog, job: Job, runs_dir: Path, progress: Progress | None = None,
                 on_epoch: EpochCallback | None = None, callbacks: list | None = None) -> Trainer:
    cls = FeatureTrainer if job.cfg["model"]["freeze_backbone"] else Trainer
    return cls(catalog, job, runs_dir, progress, on_epoch, callbacks)


LBFGS_ITERATIONS = 25  # iterations of one lbfgs "epoch" over the whole training set


def _constant(step: int) -> float:
    return 1.0


def optimizer_name(cfg: dict) -> str:
    name = cfg["optim"]["name"]
    if name == "auto":
        return "lbfgs" if cfg["model"]["freeze_backbone"] else "adamw"
    return name


def _quiet_worker(_worker_id: int) -> None:
    """Loader workers do light per-image work: one thread each, so they never crowd the training threads."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


# ---------------------------------------------------------------- entry points


def start_run(catalog: Catalog, *, view: str, split: str | None = None, fold: int | None = None,
              config_file=None, overrides=None, runs_dir="runs", progress: Progress | None = None,
              on_epoch: EpochCallback | None = None, callbacks: list | None = None,
              name: str | None = None, allow_stale: bool = False) -> RunResult:
    """Train one run (named `name`, else the next free serial). `callbacks` (train.callbacks.Callback) replace the
    loggers the config asks for."""
    cfg = load_config(config_file, overrides)
    if name is not None:
        check_new_name(catalog, name)
    job = prepare(catalog, view, split, fold, cfg, allow_stale=allow_stale)
    job.cfg = cfg = resolved(catalog, cfg, job.view_id)  # every auto made concrete, once: args.yaml holds no auto
    rank, world, _ = dist_info()
    runs_dir = Path(runs_dir)
    if rank == 0:
        output_dir(runs_dir, "runs folder")
        name = name or next_run_name(catalog, runs_dir)
        run_dir = runs_dir / name
        if run_dir.exists():
            raise Conflict(f"{run_dir} exists already (a run folder no catalog row names): move it or choose another --name")
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir / "args.yaml")
        (run_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        with catalog.session() as session:
            session.add(Run(name=name, view_id=job.view_id, view_hash=job.view_hash, split_id=job.split_id,
                            fold=job.fold, status="running", config=cfg, folder=str(run_dir.resolve()),
                            metric_name=cfg["train"]["metric"], created_at=utcnow()))
            session.commit()
    try:
        trainer = make_trainer(catalog, job, runs_dir, progress, on_epoch, callbacks)  # process group under torchrun
    except BaseException:
        if rank == 0:
            _mark(catalog, name, "failed")
        raise
    name = _broadcast(name, rank, world)
    job.run_name, job.run_dir = name, runs_dir / name
    return trainer.run()


def resolved(catalog: Catalog, cfg: dict, view_id: int) -> dict:
    """`config.resolve` for a run on this view, on the device the config chooses here."""
    from .config import resolve

    return resolve(cfg, device=str(choose_device(cfg["train"]["device"])),
                   crop_margin=view_crop_margin(catalog, view_id))


def _mark(catalog: Catalog, name: str, status: str) -> None:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is not None:
            run.status, run.finished_at = status, utcnow()
            session.add(run)
            session.commit()


def resume_run(catalog: Catalog, name: str, runs_dir="runs", progress: Progress | None = None,
               on_epoch: EpochCallback | None = None, allow_stale: bool = False) -> RunResult:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is None:
            raise NotFound(f"unknown run {name!r}")
        view = session.get(View, run.view_id)
        split = session.get(Split, run.split_id)
    run_dir = Path(run.folder)
    if not (run_dir / "last.pt").is_file():
        raise NotFound(f"run {name} has no last.pt to resume from (it stopped before its first epoch ended)")
    if run.status == "finished":
        raise Conflict(f"run {name} finished already")
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    cfg = validate(complete(state["config"]))
    job = prepare(catalog, view.name, split.name, run.fold, cfg, allow_stale=allow_stale)
    job.run_name, job.run_dir = name, run_dir
    (run_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return make_trainer(catalog, job, Path(runs_dir), progress, on_epoch).run(resume=state)


def _fold_runs(catalog: Catalog, split_id: int, fold: int, cfg: dict, status: set[str]) -> list[Run]:
    from ..evaluate.experiments import effective_status

    with catalog.session() as session:
        rows = session.execute(select(Run).where(Run.split_id == split_id, Run.fold == fold)
                               .order_by(Run.id.desc())).scalars().all()
    return [r for r in rows if _same_recipe(r.config, cfg) and effective_status(r.status, r.folder) in status]


def _same_recipe(a: dict, b: dict) -> bool:
    """Two configs that train the same fold alike: equal but for where it ran (train.device; folds spread
    over devices run with their own)."""
    def strip(cfg: dict) -> dict:
        return {**cfg, "train": {k: v for k, v in cfg.get("train", {}).items() if k != "device"}}

    return strip(a) == strip(b)


def _finished_fold(catalog: Catalog, split_id: int, fold: int, cfg: dict) -> RunResult | None:
    """A run of this fold with exactly this config that finished (and still has its files): reused."""
    for run in _fold_runs(catalog, split_id, fold, cfg, {"finished"}):
        folder = Path(run.folder)
        if (folder / "val_probs.npz").is_file() and (folder / "best.pt").is_file():
            return RunResult(run.name, run.best_epoch, run.best_metric, str(folder))
    return None


def _interrupted_fold(catalog: Catalog, split_id: int, fold: int, cfg: dict) -> str | None:
    """An interrupted (or killed) run of this fold with this config that kept an epoch: resumed. One that died
    before its first epoch is marked failed, and the fold is trained anew."""
    for run in _fold_runs(catalog, split_id, fold, cfg, {"interrupted"}):
        if (Path(run.folder) / "last.pt").is_file():
            return run.name
        _mark(catalog, run.name, "failed")
    return None


def _folds_on_devices(catalog: Catalog, s, view: str, split: str, cfg: dict, devices: list[str], config_file,
                      overrides, runs_dir, progress) -> None:
    """The folds not finished yet (nor resumable), trained in parallel over `devices`; names reserved here."""
    from .devices import run_folds

    pending = [k for k in range(s.folds) if _finished_fold(catalog, s.id, k, cfg) is None
               and _interrupted_fold(catalog, s.id, k, cfg) is None]
    if not pending:
        return
    taken = names_taken(catalog)
    names, n = {}, 1
    for k in pending:
        while f"{n:04d}" in taken or (Path(runs_dir) / f"{n:04d}").exists():
            n += 1
        names[k] = f"{n:04d}"
        n += 1
    run_folds(catalog.url, view=view, split=split, folds=pending, names=names, devices=devices,
              config_file=config_file, overrides=list(overrides or []), runs_dir=runs_dir, progress=progress)


def cross_validate(catalog: Catalog, *, view: str, split: str, config_file=None, overrides=None, runs_dir="runs",
                   progress: Progress | None = None, on_epoch: EpochCallback | None = None,
                   devices: list[str] | None = None) -> CrossValidation:
    """Train every fold of a k-fold split; out-of-fold probabilities for every person into oof_<split>.npz.
    `devices` (two or more): the folds still to train run in parallel, one process per device (train/devices.py)."""
    from ..datasets.splits import get_split

    s = get_split(catalog, split)
    if s.kind != "kfold":
        raise InvalidInput(f"--fold all needs a k-fold split; {split!r} is a holdout")
    cfg = load_config(config_file, overrides)
    first = prepare(catalog, view, split, 0, cfg)  # the view must be fresh when the job starts; its later folds read
    cfg = resolved(catalog, cfg, first.view_id)  # fold runs record resolved configs: compare like with like
    results = []                           # that snapshot even if labels change meanwhile (relabel, audit)
    if devices and len(devices) > 1:
        _folds_on_devices(catalog, s, view, split, cfg, devices, config_file, overrides, runs_dir, progress)
    for k in range(s.folds):
        done = _finished_fold(catalog, s.id, k, cfg)
        if done is not None:  # a rerun after a kill continues from the folds that finished
            results.append(done)
            continue
        interrupted = _interrupted_fold(catalog, s.id, k, cfg)
        if interrupted is not None:
            results.append(resume_run(catalog, interrupted, runs_dir, progress, on_epoch, allow_stale=True))
            continue
        results.append(start_run(catalog, view=view, split=split, fold=k, config_file=config_file,
                                 overrides=overrides, runs_dir=runs_dir, progress=progress, on_epoch=on_epoch,
                                 allow_stale=True))
    parts = [np.load(Path(r.folder) / "val_probs.npz") for r in results]
    oof = Path(runs_dir) / f"oof_{split}_{results[0].run}.npz"
    np.savez(oof, probs=np.concatenate([p["probs"] for p in parts]), labels=np.concatenate([p["labels"] for p in parts]),
             image_ids=np.concatenate([p["image_ids"] for p in parts]),
             profile_ids=np.concatenate([p["profile_ids"] for p in parts]),
             runs=np.array([r.run for r in results]))
    return CrossValidation(results, str(oof))
