"""Training configuration: the documented default YAML, a user YAML and key=value overrides, checked
against the known keys and types ("did you mean" for typos). The effective config is saved with the run."""

from __future__ import annotations

import copy
from difflib import get_close_matches
from importlib.resources import files
from pathlib import Path

import yaml

from ..errors import MaskkitError

CHOICES = {
    "model.pretrained": ("auto", "package", "hub", "file", "none"),
    "model.head": ("single", "multi", "soft"),
    "model.prior": ("auto", "face", "none"),
    "loss.name": ("ce", "label_smoothing", "focal", "f1"),
    "loss.class_weights": ("none", "balanced"),
    "optim.name": ("auto", "adamw", "sgd", "lbfgs"),
}
OPTIONAL_TYPES = {"model.pretrained_file": str, "data.cache_dir": str, "loss.focal_alpha": float,
                  "train.max_batches": int}


def default_config() -> dict:
    return yaml.safe_load((files("maskkit.train") / "default.yaml").read_text())


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _suggest(key: str, known) -> str:
    close = get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value, default):
    expected = OPTIONAL_TYPES.get(key) or type(default)
    if value is None:
        if key in OPTIONAL_TYPES:
            return None
        raise MaskkitError(f"config {key} must not be empty")
    if isinstance(value, str) and expected is not str:
        parsed = yaml.safe_load(value)
        value = parsed
    if expected is bool:
        if not isinstance(value, bool):
            raise MaskkitError(f"config {key} must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise MaskkitError(f"config {key} must be a whole number, got {value!r}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MaskkitError(f"config {key} must be a number, got {value!r}")
        return float(value)
    if expected is str:
        value = str(value)
        if key in CHOICES and value not in CHOICES[key]:
            raise MaskkitError(f"config {key} must be one of {', '.join(CHOICES[key])}, got {value!r}"
                               + _suggest(value, CHOICES[key]))
        return value
    return value


def _set(cfg: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """defaults <- YAML file <- overrides, every key and type checked."""
    cfg = default_config()
    known = _flat(cfg)
    updates: dict = {}
    if path:
        from ..files import read_yaml_mapping

        for key, value in _flat(read_yaml_mapping(path, "config")).items():
            updates[key] = value
    if isinstance(overrides, dict):
        updates.update(_flat(overrides) if any(isinstance(v, dict) for v in overrides.values()) else overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise MaskkitError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
            key, _, value = item.partition("=")
            updates[key.strip()] = value.strip()
    for key, value in updates.items():
        if key not in known:
            raise MaskkitError(f"unknown config key {key!r}{_suggest(key, known)}")
        _set(cfg, key, _coerce(key, value, known[key]))
    return validate(cfg)


def validate(cfg: dict) -> dict:
    checks = [
        (cfg["data"]["image_size"] >= 32, "data.image_size must be at least 32"),
        (cfg["data"]["batch_size"] >= 1, "data.batch_size must be at least 1"),
        (cfg["data"]["workers"] >= 0, "data.workers must be 0 or more"),
        (cfg["schedule"]["epochs"] >= 1, "schedule.epochs must be at least 1"),
        (cfg["optim"]["lr"] > 0, "optim.lr must be positive"),
        (0 <= cfg["augment"]["hflip"] <= 1, "augment.hflip is a probability (0..1)"),
        (0 < cfg["augment"]["crop_scale_min"] <= 1, "augment.crop_scale_min must be in (0, 1]"),
        (cfg["model"]["freeze_stages"] >= 0, "model.freeze_stages must be 0 or more"),
        (cfg["model"]["prior"] != "face" or cfg["model"]["freeze_backbone"],
         "model.prior=face needs model.freeze_backbone=true (the prior's features feed the heads)"),
        (cfg["optim"]["name"] != "lbfgs" or cfg["model"]["freeze_backbone"],
         "optim.name=lbfgs fits heads on frozen features: it needs model.freeze_backbone=true"),
        (cfg["model"]["head_l2"] >= 0, "model.head_l2 must be 0 or more"),
        (not cfg["model"]["freeze_backbone"] or cfg["model"]["head"] != "soft",
         "model.freeze_backbone=true trains model.head=single or multi"),
        (cfg["model"]["pretrained"] != "file" or cfg["model"]["pretrained_file"],
         "model.pretrained=file needs model.pretrained_file"),
    ]
    for ok, message in checks:
        if not ok:
            raise MaskkitError(message)
    return cfg


def save_config(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
