"""The run loop both recipes share: seeding, the optimizer and its schedule from the config, epochs with
validation, best.pt / last.pt / val_probs.npz, the catalog row, callbacks, Ctrl-C and resume. Each recipe's
trainer (finetune.FineTuneTrainer, feature_trainer.FeatureTrainer) supplies its inputs, model, epoch and
validation.

runs/<name>/ holds args.yaml (the effective config), metrics.csv (one row per epoch), best.pt and
last.pt, val_probs.npz (validation probabilities of the kept epoch: the last one by default, train.metric), curves.png and TensorBoard events.
`runs.resume_run` continues an interrupted run exactly: model, optimizer, scheduler, scaler, epoch, and the
per-epoch seeds that fix data order and augmentation.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Run, utcnow
from ..errors import InvalidInput
from ..files import atomic_path
from ..progress import Progress
from . import accel
from .callbacks import METRIC_KEYS
from .distributed import dist_info, init_distributed
from .job import EpochCallback, Job, RunInterrupted, RunResult, choose_device
from .losses import Criterion, balanced_weights

LBFGS_ITERATIONS = 25  # iterations of one lbfgs "epoch" over the whole training set


def optimizer_name(cfg: dict) -> str:
    name = cfg["optim"]["name"]
    if name == "auto":
        from .recipes import recipe_of

        return "lbfgs" if recipe_of(cfg) == "features" else "adamw"
    return name


def logit_adjustment(train_labels: list[int], tau: float) -> list[float] | None:
    """loss.logit_adjust: per-class offsets -tau x log(training class frequency) (add-one smoothed), added to the
    log-probabilities of every prediction (Menon et al., "Long-tail learning via logit adjustment")."""
    if not tau:
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=L.NUM_CLASSES) + 1.0
    return (-tau * np.log(counts / counts.sum())).tolist()


def soft_age_targets(samples: list, sigma: float) -> torch.Tensor | None:
    """(N,18) training targets whose age band is spread around each person's labelled age (labels.soft_targets);
    None when sigma is 0 (the labels themselves) or no sample knows its age."""
    if not sigma or any(s.age is None for s in samples):
        return None
    return torch.from_numpy(L.soft_targets([s.label for s in samples], [s.age for s in samples], sigma))


def balanced_draw(labels: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """data.weighted_sampler's one draw, for both recipes: len(rows) rows drawn with replacement, each inversely
    to its 18-class frequency among `rows` (training only: validation is never resampled)."""
    counts = torch.bincount(labels[rows], minlength=L.NUM_CLASSES).double()
    return rows[torch.multinomial(1.0 / counts[labels[rows]], len(rows), True, generator=generator)]


def balancing_weights(labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """data.balance_by=weights: each row's weight (mean 1) in the loss, 1 / its 18-class count among `rows`: what
    a row's share of the balanced draw is on average (every class gets the same total weight)."""
    counts = torch.bincount(labels[rows], minlength=L.NUM_CLASSES).float()
    weights = 1.0 / counts[labels[rows]]
    return weights * (len(rows) / weights.sum())


def _constant(step: int) -> float:
    return 1.0


class Trainer:
    """One run of one recipe. Subclasses define `_prepare_inputs`, `_make_model`, `_train_epoch` and
    `validate` (and, if they need more in best.pt, `_checkpoint_extra`)."""

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
        self.labels = torch.tensor([s.label for s in job.samples])
        self.soft_targets = soft_age_targets(job.samples, self.cfg["loss"]["age_sigma"])
        if self.world > 1:
            init_distributed(device)

    # -- set-up

    def _seed(self, value: int) -> None:
        random.seed(value)
        np.random.seed(value % (2**32))
        torch.manual_seed(value)

    def _cache_dir(self) -> Path:
        return Path(self.cfg["data"]["cache_dir"] or self.runs_dir / "cache")

    def _epoch_rows(self, epoch: int) -> torch.Tensor:
        """This epoch's training rows in order: the balanced draw (data.weighted_sampler) or a shuffle, seeded by
        the epoch alone (the same however the epoch is reached), the same on every rank (each takes its share)."""
        gen = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1000 + epoch * 10 + 1)
        rows = torch.tensor(self.job.train_rows)
        if self.cfg["data"]["weighted_sampler"]:
            return balanced_draw(self.labels, rows, gen)
        return rows[torch.randperm(len(rows), generator=gen)]

    def _targets(self, rows: torch.Tensor) -> torch.Tensor:
        """The training targets of these rows: their labels, or (N,18) soft targets (loss.age_sigma > 0)."""
        return self.labels[rows] if self.soft_targets is None else self.soft_targets[rows]

    def _prepare_inputs(self) -> None:
        raise NotImplementedError

    def _make_model(self) -> torch.nn.Module:
        raise NotImplementedError

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
        floor = cfg["schedule"]["min_lr"] / o["lr"] if o["lr"] else 1.0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(  # lbfgs keeps its step length (its line search sets it)
            self.optimizer, factor if self.optim_name != "lbfgs" else _constant)
        self.dtype = None  # fp32 unless the recipe's trainer sets a mixed precision
        self.scaler = accel.grad_scaler(self.device, None)

    # -- the run

    def _train_epoch(self, epoch: int) -> float:
        raise NotImplementedError

    def validate(self) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _metric(self, metrics: dict) -> float:
        name = self.cfg["train"]["metric"]
        key = name.removeprefix("val_")
        if name == "last":  # no pick: every epoch replaces the last (its macro F1 is what the run reports)
            return metrics["macro_f1"]
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
                improved = score > best or cfg["train"]["metric"] == "last"
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
