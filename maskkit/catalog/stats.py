"""Counts over the catalog's current labels: what `maskkit stats` shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from .. import labels
from .engine import Catalog
from .models import DataRoot, EvalImage, Image, Profile


def _band_expr(age_column):
    return labels.band_sql(age_column)


@dataclass
class CatalogStats:
    profiles: int = 0
    profiles_by_origin: dict[str, int] = field(default_factory=dict)
    images: int = 0
    damaged: list[str] = field(default_factory=list)
    eval_images: int = 0
    eval_damaged: list[str] = field(default_factory=list)
    people_by_gender: dict[str, int] = field(default_factory=dict)
    people_by_band: dict[str, int] = field(default_factory=dict)
    people_gender_band: dict[str, dict[str, int]] = field(default_factory=dict)
    images_by_mask: dict[str, int] = field(default_factory=dict)
    images_by_gender: dict[str, int] = field(default_factory=dict)
    images_by_band: dict[str, int] = field(default_factory=dict)
    class_counts: list[int] = field(default_factory=lambda: [0] * labels.NUM_CLASSES)  # usable images
    age_histogram: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "profiles": self.profiles,
            "profiles_by_origin": self.profiles_by_origin,
            "images": self.images,
            "damaged": self.damaged,
            "damaged_count": len(self.damaged),
            "eval_images": self.eval_images,
            "eval_damaged": self.eval_damaged,
            "people": {
                "gender": self.people_by_gender,
                "age_band": self.people_by_band,
                "gender_x_age_band": self.people_gender_band,
            },
            "images_by": {"mask": self.images_by_mask, "gender": self.images_by_gender, "age_band": self.images_by_band},
            "classes": [
                {"class": c, "name": labels.class_name(c), "images": n} for c, n in enumerate(self.class_counts)
            ],
            "age_histogram": {str(age): n for age, n in sorted(self.age_histogram.items())},
        }


def _rel(root_path: str, path: str) -> str:
    return f"{root_path.rstrip('/')}/{path}"


def catalog_stats(catalog: Catalog) -> CatalogStats:
    s = CatalogStats()
    with catalog.session() as session:
        q = session.execute
        s.profiles_by_origin = {o: n for o, n in q(select(Profile.origin, func.count()).group_by(Profile.origin))}
        s.profiles = sum(s.profiles_by_origin.values())
        s.images = q(select(func.count()).select_from(Image)).scalar_one()
        s.damaged = [
            _rel(root, path)
            for root, path in q(
                select(DataRoot.path, Image.path).join(Profile, Profile.id == Image.profile_id)
                .join(DataRoot, DataRoot.id == Profile.root_id).where(Image.damaged.is_(True)).order_by(Image.path)
            )
        ]
        s.eval_images = q(select(func.count()).select_from(EvalImage)).scalar_one()
        s.eval_damaged = [
            _rel(root, path)
            for root, path in q(
                select(DataRoot.path, EvalImage.path).join(DataRoot, DataRoot.id == EvalImage.root_id)
                .where(EvalImage.damaged.is_(True)).order_by(EvalImage.path)
            )
        ]
        band = _band_expr(Profile.age)
        gb = {g: {b: 0 for b in labels.AGE_BANDS} for g in labels.GENDERS}
        for gender, b, n in q(select(Profile.gender, band, func.count()).group_by(Profile.gender, band)):
            gb.setdefault(gender, {bb: 0 for bb in labels.AGE_BANDS})[labels.AGE_BANDS[b]] = n
        s.people_gender_band = gb
        s.people_by_gender = {g: sum(v.values()) for g, v in gb.items()}
        s.people_by_band = {b: sum(v[b] for v in gb.values()) for b in labels.AGE_BANDS}
        s.age_histogram = {a: n for a, n in q(select(Profile.age, func.count()).group_by(Profile.age))}

        mask_counts = {m: 0 for m in labels.MASK_STATES}
        gender_counts = {g: 0 for g in labels.GENDERS}
        band_counts = {b: 0 for b in labels.AGE_BANDS}
        stmt = (
            select(Image.mask, Profile.gender, band, Image.damaged, func.count())
            .join(Profile, Profile.id == Image.profile_id)
            .group_by(Image.mask, Profile.gender, band, Image.damaged)
        )
        for mask, gender, b, damaged, n in q(stmt):
            mask_counts[labels.MASK_STATES[mask]] += n
            gender_counts[gender] = gender_counts.get(gender, 0) + n
            band_counts[labels.AGE_BANDS[b]] += n
            if not damaged and gender in labels.GENDERS:
                s.class_counts[labels.encode(mask, labels.gender_index(gender), b)] += n
        s.images_by_mask, s.images_by_gender, s.images_by_band = mask_counts, gender_counts, band_counts
    return s


def plot_stats(stats: CatalogStats, out_dir) -> list:
    """PNG charts of the counts into out_dir; returns the paths written."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path, output_dir

    out = output_dir(out_dir, "--plot folder")
    written = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        with atomic_path(path, "plot") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(11, 4))
    names = [labels.class_name(c) for c in range(labels.NUM_CLASSES)]
    ax.bar(range(labels.NUM_CLASSES), stats.class_counts, color=[f"C{labels.decode(c).mask}" for c in range(labels.NUM_CLASSES)])
    ax.set_xticks(range(labels.NUM_CLASSES), [f"{c}\n{n}" for c, n in enumerate(names)], fontsize=6, rotation=90)
    ax.set_ylabel("images")
    ax.set_title("images per class (usable)")
    save(fig, "classes.png")

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, (title, counts) in zip(axes, (("mask state (images)", stats.images_by_mask),
                                          ("gender (people)", stats.people_by_gender),
                                          ("age band (people)", stats.people_by_band))):
        ax.bar(list(counts), list(counts.values()))
        ax.set_title(title)
    save(fig, "labels.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    matrix = [[stats.people_gender_band[g][b] for b in labels.AGE_BANDS] for g in labels.GENDERS]
    im = ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center")
    ax.set_xticks(range(3), [f"{b} {r}" for b, r in zip(labels.AGE_BANDS, labels.AGE_BAND_RANGES)])
    ax.set_yticks(range(2), list(labels.GENDERS))
    ax.set_title("people: gender x age band")
    fig.colorbar(im, ax=ax)
    save(fig, "gender_age.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ages = sorted(stats.age_histogram)
    ax.bar(ages, [stats.age_histogram[a] for a in ages])
    for edge in (labels.YOUNG_MAX_AGE + 0.5, labels.MIDDLE_MAX_AGE + 0.5):
        ax.axvline(edge, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("age")
    ax.set_ylabel("people")
    ax.set_title("age histogram (dashed: band edges)")
    save(fig, "ages.png")
    return written
