"""The finetune recipe's trainer: the whole network trains on images (AdamW/SGD with warmup and cosine, mixed
precision, channels_last, torch.compile, augmentation as batched tensor ops on the device, CutMix/Mixup, DDP
under torchrun). With model.prior=face the face prior's features, computed once per image and cached (they
do not change while the backbone trains), join the pooled CNN features before the heads (models.PriorFused)."""

from __future__ import annotations

import numpy as np
import torch

from . import accel
from .data import DecodedCache, ImageDataset, collate_batch, mix_batch, prepare_batch
from .distributed import gather
from .job import view_crop_margin
from .metrics import apply_bias, evaluate
from .models import create_model
from .trainer import Trainer


class _EpochOrder(torch.utils.data.Sampler):
    """The rows of one epoch, in the order `Trainer._epoch_rows` drew them (set before each epoch)."""

    def __init__(self):
        self.rows: list[int] = []

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


def quiet_worker(_worker_id: int) -> None:
    """Loader workers do light per-image work: one thread each, so they never crowd the training threads."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def prior_features(catalog, job, cache_dir, progress, rank: int = 0, world: int = 1) -> torch.Tensor:
    """(N, P) face-prior features of every sample of the job, from the feature cache (computed where missing;
    under torchrun by rank 0 while the others wait)."""
    from .features import FeatureCache, PriorExtractor

    bank = FeatureCache(cache_dir, PriorExtractor(view_crop_margin(catalog, job.view_id)))
    paths = [s.path for s in job.samples]
    if world > 1:
        import torch.distributed as dist

        if rank == 0:
            bank.features(paths, progress)
        dist.barrier()
    return torch.from_numpy(bank.features(paths, progress if rank == 0 else None))


class FineTuneTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers = accel.loader_workers(self.cfg["data"]["workers"])
        self._loaders: dict = {}
        self.prior = None

    def _loader(self, rows: list[int], train: bool, epoch: int) -> torch.utils.data.DataLoader:
        """The loader for training or validation, made once per run (its workers persist across epochs). Training
        reads this epoch's rows as `_epoch_rows` drew them (the one balanced draw both recipes use), this rank's
        share; validation reads `rows` in order (in eval mode, where a batch of one is fine)."""
        cfg = self.cfg
        made = self._loaders.get(train)
        if made is None:
            order = _EpochOrder() if train else None
            ds = ImageDataset(self.job.samples, list(range(len(self.job.samples))) if train else rows,
                              cfg["data"]["image_size"], self.cache)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=cfg["data"]["batch_size"], shuffle=False, sampler=order, num_workers=self.workers,
                drop_last=False, worker_init_fn=quiet_worker, collate_fn=collate_batch,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers else None)
            made = self._loaders[train] = (loader, order)
        loader, order = made
        if train:  # every rank the same share (DDP steps in lockstep); never a last batch of one (batch norm)
            drawn = self._epoch_rows(epoch)
            share = len(drawn) // self.world
            if share > 1 and share % cfg["data"]["batch_size"] == 1:
                share -= 1
            order.rows = drawn[:share * self.world][self.rank::self.world].tolist()
        return loader

    def _prepare_inputs(self) -> None:
        """The decoded-image cache every epoch reads, and the face prior's features when the config asks."""
        cfg = self.cfg
        self.cache = None
        if cfg["data"]["cache"]:
            self.cache = DecodedCache(self._cache_dir(), self.job.samples, self.job.view_hash, cfg["data"]["image_size"])
            if self.rank == 0:
                self.cache.build(self.progress, workers=max(2, cfg["data"]["workers"]))
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()
        if cfg["model"]["prior"] == "face":
            self.prior = prior_features(self.catalog, self.job, self._cache_dir(), self.progress, self.rank,
                                        self.world)

    def _make_model(self) -> torch.nn.Module:
        if self.prior is None:
            return create_model({**self.cfg["model"]})
        model = create_model({**self.cfg["model"]}, prior_dim=self.prior.shape[1])
        model.set_prior_scale(self.prior[self.job.train_rows])
        return model

    def _checkpoint_extra(self) -> dict:
        return {"crop_margin": view_crop_margin(self.catalog, self.job.view_id)} if self.prior is not None else {}

    def _build(self) -> None:
        super()._build()
        cfg = self.cfg
        self.dtype = accel.autocast_dtype(cfg["train"]["precision"], self.device)
        self.scaler = accel.grad_scaler(self.device, self.dtype)
        self.layout_last = accel.channels_last(cfg["train"]["channels_last"], self.device, self.model)
        if self.layout_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_net = accel.compile_model(self.net, cfg["train"]["compile"])  # the training forward

    def _inputs(self, rows: torch.Tensor) -> tuple:
        """What the network takes besides the images: the rows' prior features (model.prior=face)."""
        if self.prior is None:
            return ()
        return (self.prior[rows].to(self.device, non_blocking=True),)

    # -- one epoch

    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.net.train()
        self._seed(cfg["train"]["seed"] * 1000 + epoch)  # augmentation in the main process is reproducible too
        mix_gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 7919 + epoch)
        aug_gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 104729 + epoch * 31 + self.rank)
        loader = self._loader(self.job.train_rows, True, epoch)
        total, count = 0.0, 0
        for step, (x, y, rows) in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            x, y = accel.to_device(x, self.device, self.layout_last), y.to(self.device, non_blocking=True)
            x = accel.augment_geometry_batch(x, cfg["augment"], aug_gen)
            x = prepare_batch(x, cfg["augment"])
            extra = self._inputs(rows)
            target = y if self.soft_targets is None else self._targets(rows).to(self.device, non_blocking=True)
            if cfg["augment"]["cutmix"] > 0 or cfg["augment"]["mixup"] > 0:
                x, target, extra = mix_batch(x, target, cfg["augment"], mix_gen, extra)
            with accel.autocast(self.device, self.dtype):
                out = self.step_net(x, *extra)
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
                out = accel.fp32(self.model(x, *self._inputs(row)))
            losses.append(float(self.criterion(out, y)) * len(x))
            probs.append(self.model.probs(out).cpu().numpy())
            labels.append(y.cpu().numpy())
            idx.append(row.numpy())
        arrays = [np.concatenate(probs), np.concatenate(labels), np.concatenate(idx), np.array([sum(losses)])]
        probs, labels, idx, loss_sum = gather(arrays, self.world)
        order = np.argsort(idx)
        probs, labels, idx = apply_bias(probs[order], self.decision_bias), labels[order], idx[order]
        metrics = evaluate(probs, labels)
        metrics["val_loss"] = float(loss_sum.sum() / max(1, len(labels)))
        return metrics, probs, labels, idx
