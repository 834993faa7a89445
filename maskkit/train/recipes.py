"""Which config keys each recipe reads, so that a key set where it does nothing is said, never silent.

Two recipes, chosen by `train.recipe`: `features` (the frozen backbone and the face prior run once per image,
heads train on the cached features; with optim=auto that is one L-BFGS full-batch step per epoch) and
`finetune` (the whole network trains on images, AdamW/SGD, the face prior's cached features joined to the
pooled CNN features before the heads); auto picks finetune where train.device is a GPU. `RULES` holds,
for every key of the schema, the recipes it belongs to and a test of whether it acts in a given config; a
test walks every key under both recipes. `train --keys` prints the recipe column.
"""

from __future__ import annotations

from typing import Callable

from .schema import KEYS


RECIPES = ("features", "finetune")


def recipe_for(recipe: str, device: str) -> str:
    """train.recipe made concrete: auto is finetune on a GPU (cuda, or auto with CUDA present), features on the CPU."""
    if recipe != "auto":
        return recipe
    if device == "auto":
        import torch

        return "finetune" if torch.cuda.is_available() else "features"
    return "finetune" if device.startswith("cuda") else "features"


def recipe_of(cfg: dict) -> str:
    return recipe_for(cfg["train"]["recipe"], cfg["train"]["device"])


def _lbfgs(cfg: dict) -> bool:
    from .trainer import optimizer_name

    return optimizer_name(cfg) == "lbfgs"


def _ft(cfg):
    return recipe_of(cfg) == "finetune"


def _stepwise(cfg):  # minibatch steps: fine-tuning, or feature heads with adamw/sgd
    return _ft(cfg) or not _lbfgs(cfg)


ALWAYS = ("both", lambda cfg: True)
FINETUNE = ("finetune", _ft)
FEATURES = ("features", lambda cfg: not _ft(cfg))
STEPWISE = ("finetune; features with optim adamw/sgd", _stepwise)

RULES: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "model.backbone": ALWAYS, "model.pretrained": ALWAYS,
    "model.pretrained_file": ("both, with model.pretrained=file", lambda c: c["model"]["pretrained"] == "file"),
    "model.head": ALWAYS,
    "model.soft_l2": ("finetune, with model.head=soft", lambda c: _ft(c) and c["model"]["head"] == "soft"),
    "model.freeze_stages": FINETUNE, "train.recipe": ALWAYS,
    "model.prior": ALWAYS,
    "model.drop_rate": STEPWISE, "model.head_l2": FEATURES, "model.pool_blocks": FEATURES,
    "model.blend_backbones": ALWAYS,
    "model.age_head": ("features, with model.head=multi", lambda c: not _ft(c) and c["model"]["head"] == "multi"),
    "data.image_size": ALWAYS, "data.batch_size": STEPWISE, "data.workers": FINETUNE, "data.cache": FINETUNE,
    "data.cache_dir": ALWAYS, "data.weighted_sampler": ALWAYS,
    "data.balance_by": ("features with optim lbfgs and data.weighted_sampler",
                        lambda c: not _ft(c) and _lbfgs(c) and c["data"]["weighted_sampler"]), "data.train_exclude_ages": ALWAYS,
    "augment.hflip": STEPWISE, "augment.color_jitter": FINETUNE, "augment.crop_scale_min": FINETUNE,
    "augment.cutmix": FINETUNE, "augment.mixup": STEPWISE,
    "loss.name": ALWAYS,
    "loss.label_smoothing": ("both, with loss.name=label_smoothing", lambda c: c["loss"]["name"] == "label_smoothing"),
    "loss.focal_gamma": ("both, with loss.name=focal", lambda c: c["loss"]["name"] == "focal"),
    "loss.focal_alpha": ("both, with loss.name=focal", lambda c: c["loss"]["name"] == "focal"),
    "loss.class_weights": ALWAYS, "loss.logit_adjust": ALWAYS, "loss.age_sigma": ALWAYS,
    "optim.name": ALWAYS, "optim.lr": STEPWISE, "optim.weight_decay": STEPWISE,
    "optim.momentum": ("with optim.name=sgd", lambda c: c["optim"]["name"] == "sgd"),
    "schedule.epochs": ALWAYS, "schedule.warmup_epochs": STEPWISE, "schedule.min_lr": STEPWISE,
    "train.seed": ALWAYS, "train.device": ALWAYS, "train.precision": FINETUNE, "train.channels_last": FINETUNE,
    "train.compile": FINETUNE, "train.grad_clip": STEPWISE, "train.early_stopping": ALWAYS, "train.metric": ALWAYS,
    "train.offsets": ALWAYS, "train.pool_people": ALWAYS, "train.pool_masks": ALWAYS,
    "train.max_batches": STEPWISE, "log.tensorboard": ALWAYS, "log.wandb": ALWAYS,
}
missing = {k.name for k in KEYS} - set(RULES)
assert not missing, f"config keys without a recipe rule: {sorted(missing)}"


def describe(cfg: dict) -> str:
    if _ft(cfg):
        return "the finetune recipe (train.recipe=finetune: the whole network trains on images)"
    if _lbfgs(cfg):
        return ("the features recipe (train.recipe=features: heads on cached features, one L-BFGS "
                "full-batch step per epoch)")
    return "the features recipe (train.recipe=features: heads on cached features)"


def idle_settings(cfg: dict, set_keys) -> list[str]:
    """One note per key the user set (file or key=value) that does nothing in this config."""
    notes = []
    for key in sorted(set_keys):
        rule = RULES.get(key)
        if rule and not rule[1](cfg):
            notes.append(f"{key} does nothing in {describe(cfg)}; it acts in: {rule[0]}")
    return notes


def announce(cfg: dict) -> str:
    """One line for the terminal: the recipe that will run and why."""
    recipe = recipe_of(cfg)
    if cfg["train"]["recipe"] != "auto":
        why = f"train.recipe={recipe}"
    elif recipe == "finetune":
        why = "train.recipe=auto and a GPU is here; train.recipe=features for frozen features"
    else:
        why = "train.recipe=auto and no GPU is here; train.recipe=finetune trains the whole network"
    return f"recipe: {recipe} ({why})"
