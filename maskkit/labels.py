"""The label vocabulary of the mask task, in one place.

Class index = mask * 6 + gender * 3 + age_band (18 classes), with
mask 0 wear / 1 incorrect / 2 not wear, gender 0 male / 1 female,
age band 0 (<30) / 1 (30-59) / 2 (>=60).
"""

from __future__ import annotations

from typing import NamedTuple

MASK_STATES: tuple[str, ...] = ("wear", "incorrect", "not_wear")
GENDERS: tuple[str, ...] = ("male", "female")
AGE_BANDS: tuple[str, ...] = ("young", "middle", "old")
AGE_BAND_RANGES: tuple[str, ...] = ("<30", "30-59", ">=60")

#: image kinds of one person's folder, in display order, and the mask state each stands for
IMAGE_KINDS: tuple[str, ...] = (
    "mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal",
)
KIND_MASK: dict[str, int] = {
    **{f"mask{i}": 0 for i in range(1, 6)},
    "incorrect_mask": 1,
    "normal": 2,
}

YOUNG_MAX_AGE = 29  # ages <= this are band 0
MIDDLE_MAX_AGE = 59  # ages <= this (and above YOUNG_MAX_AGE) are band 1
MIN_AGE, MAX_AGE = 0, 120

NUM_CLASSES = len(MASK_STATES) * len(GENDERS) * len(AGE_BANDS)
#: a class index is mask * MASK_STRIDE + gender * GENDER_STRIDE + age band (the only place this is written)
GENDER_STRIDE = len(AGE_BANDS)
MASK_STRIDE = len(GENDERS) * len(AGE_BANDS)
#: inclusive age range of each band (the whole 0..120 span)
BAND_AGE_RANGES: tuple[tuple[int, int], ...] = ((MIN_AGE, YOUNG_MAX_AGE), (YOUNG_MAX_AGE + 1, MIDDLE_MAX_AGE),
                                                (MIDDLE_MAX_AGE + 1, MAX_AGE))
#: ages typical of a band, for drawing made-up people of it (the real data run 18..80)
BAND_TYPICAL_AGES: tuple[tuple[int, int], ...] = ((18, YOUNG_MAX_AGE), (YOUNG_MAX_AGE + 1, MIDDLE_MAX_AGE),
                                                  (MIDDLE_MAX_AGE + 1, 80))


class Label(NamedTuple):
    mask: int
    gender: int
    age_band: int


def age_band(age: int) -> int:
    """Age band of an age in years: 0 (<30), 1 (30-59), 2 (>=60)."""
    if isinstance(age, bool) or not isinstance(age, int):
        raise TypeError(f"age must be an int, got {age!r}")
    if not MIN_AGE <= age <= MAX_AGE:
        raise ValueError(f"age {age} is outside {MIN_AGE}..{MAX_AGE}")
    if age <= YOUNG_MAX_AGE:
        return 0
    if age <= MIDDLE_MAX_AGE:
        return 1
    return 2


def encode_any(mask, gender, band):
    """Class indices of arrays, tensors or SQL expressions (no checks): the vectorised `encode`."""
    return mask * MASK_STRIDE + gender * GENDER_STRIDE + band


def fields(classes):
    """(mask, gender, age band) of class indices: ints, numpy arrays or torch tensors."""
    return classes // MASK_STRIDE, (classes // GENDER_STRIDE) % len(GENDERS), classes % GENDER_STRIDE


def joint(p_mask, p_gender, p_band):
    """(N,3), (N,2), (N,3) probabilities (numpy or torch) -> (N,18) in class order."""
    return (p_mask[:, :, None, None] * p_gender[:, None, :, None] * p_band[:, None, None, :]).reshape(-1, NUM_CLASSES)


def marginals(probs):
    """(N,18) probabilities or mixtures -> (N,3) mask, (N,2) gender, (N,3) age band (numpy or torch)."""
    p = probs.reshape(-1, len(MASK_STATES), len(GENDERS), len(AGE_BANDS))
    return p.sum((2, 3)), p.sum((1, 3)), p.sum((1, 2))


def soft_band_targets(ages, sigma: float):
    """(N,) ages in years -> (N, 3) float32 band probabilities of a normal around each age with this spread in
    years (the band edges between whole ages: 29.5 and 59.5); sigma 0 (or under a thousandth of a year): the band
    itself, one-hot."""
    import numpy as np
    from scipy.special import ndtr

    ages = np.asarray(ages, dtype=np.float64)
    if sigma < 1e-3:
        return np.eye(len(AGE_BANDS), dtype=np.float32)[band_of_ages(ages)]
    below_young = ndtr((YOUNG_MAX_AGE + 0.5 - ages) / sigma)
    below_old = ndtr((MIDDLE_MAX_AGE + 0.5 - ages) / sigma)
    return np.stack([below_young, below_old - below_young, 1 - below_old], 1).astype(np.float32)


def soft_targets(classes, ages, sigma: float):
    """(N,) 18-class labels and their people's ages -> (N, 18) float32 targets: the labelled mask and gender, the
    age band spread by `soft_band_targets` (a person aged 29 counts partly as 30-59)."""
    import numpy as np

    classes = np.asarray(classes, dtype=np.int64)
    mask, gender, _ = fields(classes)
    return joint(np.eye(len(MASK_STATES), dtype=np.float32)[mask], np.eye(len(GENDERS), dtype=np.float32)[gender],
                 soft_band_targets(ages, sigma))


def band_of_ages(ages):
    """Age bands of a numpy array of ages."""
    import numpy as np

    return np.digitize(np.asarray(ages), [YOUNG_MAX_AGE + 1, MIDDLE_MAX_AGE + 1])


def band_sql(age_column):
    """The age band as an SQL expression of an age column."""
    from sqlalchemy import case

    return case((age_column <= YOUNG_MAX_AGE, 0), (age_column <= MIDDLE_MAX_AGE, 1), else_=2)


def encode(mask: int, gender: int, band: int) -> int:
    """Class index of (mask, gender, age band)."""
    for name, value, size in (("mask", mask, 3), ("gender", gender, 2), ("age_band", band, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ValueError(f"{name} must be an int in 0..{size - 1}, got {value!r}")
    return encode_any(mask, gender, band)


def decode(class_index: int) -> Label:
    """(mask, gender, age band) of a class index 0..17."""
    if isinstance(class_index, bool) or not isinstance(class_index, int) or not 0 <= class_index < NUM_CLASSES:
        raise ValueError(f"class index must be an int in 0..{NUM_CLASSES - 1}, got {class_index!r}")
    return Label(*fields(class_index))


def gender_index(gender: str) -> int:
    """0 for 'male', 1 for 'female' (case and surrounding space ignored)."""
    key = gender.strip().lower() if isinstance(gender, str) else gender
    if key not in GENDERS:
        raise ValueError(f"gender must be one of {', '.join(GENDERS)}, got {gender!r}")
    return GENDERS.index(key)


def mask_index(state: str) -> int:
    """Mask state index from its name ('wear', 'incorrect', 'not_wear') or an image kind."""
    key = state.strip().lower() if isinstance(state, str) else state
    if key in MASK_STATES:
        return MASK_STATES.index(key)
    if key in KIND_MASK:
        return KIND_MASK[key]
    aliases = {"worn": 0, "mask": 0, "correct": 0, "incorrect_mask": 1, "none": 2, "no_mask": 2, "normal": 2}
    if key in aliases:
        return aliases[key]
    raise ValueError(f"mask state must be one of {', '.join(MASK_STATES)}, got {state!r}")


def class_name(class_index: int) -> str:
    """Readable name of a class, e.g. 'wear/female/middle'."""
    m, g, a = decode(class_index)
    return f"{MASK_STATES[m]}/{GENDERS[g]}/{AGE_BANDS[a]}"


def class_of(kind_or_mask: str | int, gender: str | int, age: int) -> int:
    """Class index of an image from its kind (or mask index), gender (name or index) and age."""
    mask = kind_or_mask if isinstance(kind_or_mask, int) else mask_index(kind_or_mask)
    g = gender if isinstance(gender, int) else gender_index(gender)
    return encode(mask, g, age_band(age))
