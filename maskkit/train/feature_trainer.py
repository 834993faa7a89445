"""The features recipe's trainer: the frozen backbone (and the face prior) run once per image into the feature
cache (features.FeatureCache); epochs fit the heads only, by default one L-BFGS full-batch step per epoch over
every training image and its mirror (like a logistic regression), or minibatch AdamW/SGD with feature Mixup."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import labels as L
from .job import view_crop_margin
from .metrics import apply_bias, evaluate
from .trainer import Trainer, balancing_weights


class FeatureTrainer(Trainer):
    """`train.recipe=features`: the backbone (and the face prior) run once per image into a feature
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
        deterministic loss). data.weighted_sampler balances it by a new draw each epoch (balance_by=draw) or
        by fixed per-image loss weights (balance_by=weights)."""
        data = self.cfg["data"]
        by_weights = data["weighted_sampler"] and data["balance_by"] == "weights"
        if data["weighted_sampler"] and not by_weights:
            rows = self._epoch_rows(self._epoch)
        else:
            rows = torch.tensor(self.job.train_rows)  # the full batch: its order does not matter
        weight = balancing_weights(self.labels, rows).repeat_interleave(2).to(self.device) if by_weights else None
        key = rows.numpy().tobytes()
        if getattr(self, "_batch_key", None) != key:  # standardised once, not in every line-search step
            with torch.no_grad():
                self._batch = self.model.standardize(self.features[rows].reshape(-1, self.features.shape[-1])
                                                     .to(self.device)).contiguous()
            self._batch_key = key
        z = self._batch
        y = self._targets(rows).repeat_interleave(2, dim=0).to(self.device)
        self.net.eval()
        last = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.criterion(self.model.logits(z), y, weight)
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
        gen = torch.Generator().manual_seed(cfg["train"]["seed"] * 1000 + epoch * 10 + 2)
        order = self._epoch_rows(epoch)
        order = order[self.rank::self.world]
        flips = (torch.rand(len(order), generator=gen) < cfg["augment"]["hflip"]).long()
        total, count, bs = 0.0, 0, cfg["data"]["batch_size"]
        steps = min(self.steps_per_epoch, math.ceil(len(order) / bs))
        for step in range(steps):
            idx, flip = order[step * bs:(step + 1) * bs], flips[step * bs:(step + 1) * bs]
            x = self.features[idx, flip].to(self.device)
            target = self._targets(idx).to(self.device)
            if cfg["augment"]["mixup"] > 0:
                x, target = mix_features(x, target, cfg["augment"]["mixup"], gen)
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
        probs = apply_bias(self.model.mirror_probs(x).cpu().numpy(), self.decision_bias)
        loss = float(self.criterion(self.model(x[:, 0]), y))
        metrics = evaluate(probs, y.cpu().numpy())
        metrics["val_loss"] = loss
        return metrics, probs, y.cpu().numpy(), rows


def mix_features(x: torch.Tensor, y: torch.Tensor, probability: float, generator: torch.Generator):
    """Mixup on feature vectors (with this probability per batch) with labels `y` (N,) or soft targets (N,18);
    returns (N,18) soft targets."""
    target = torch.nn.functional.one_hot(y, L.NUM_CLASSES).float() if y.dim() == 1 else y
    if len(x) < 2 or float(torch.rand((), generator=generator)) >= probability:
        return x, target
    perm = torch.randperm(len(x), generator=generator)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
