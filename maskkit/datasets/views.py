"""Named dataset views: a spec (which people, which image variant, how to balance, seed) materialized
into a snapshot of images and their labels, with a content hash. A view whose labels changed since
materialization is stale until it is materialized again, so a run can always say what it trained on.

Spec keys (YAML or command-line flags):
    people:
      origin: any | original | synthetic       (default any)
      exclude_ages: [57, 59]                    an inclusive range of ages to leave out
      exclude_bad: true                         leave out people reviewed as bad (default true)
      synthetic_kinds: [remask, new-face]       which synthetic people may be used (default both)
      tags: [a, b]                              only people with one of these tags
      synthetic_tags: [a]                       only synthetic people with one of these tags (e.g. the ones
                                                an experiment made: maskkit ablate tags its own)
    variant: original | crop | rembg | crop+rembg | any variant name   (default original)
    balance: none | stage1 | stage2 | {young: N, middle: N, old: N}
        stage1: every age band topped up with synthetic people to the largest band's count of real people
        stage2: every band to twice that
    seed: 0                                     which synthetic people are drawn
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from difflib import get_close_matches

from sqlalchemy import delete, func, select

from .. import labels
from ..catalog.engine import Catalog
from ..catalog.models import DERIVED_USABLE, Derived, Image, Profile, Review, Variant, View, ViewMember, utcnow
from ..names import check_name
from ..errors import Conflict, InvalidInput, NotFound

SPEC_KEYS = {"people", "variant", "balance", "seed", "description"}
PEOPLE_KEYS = {"origin", "exclude_ages", "exclude_bad", "synthetic_kinds", "tags", "synthetic_tags"}
BANDS = labels.AGE_BANDS


def _did_you_mean(key: str, known) -> str:
    close = get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def normalize_spec(spec: dict | None) -> dict:
    """A complete, validated spec with defaults filled in."""
    spec = dict(spec or {})
    for key in spec:
        if key not in SPEC_KEYS:
            raise InvalidInput(f"unknown view key {key!r}{_did_you_mean(key, SPEC_KEYS)}")
    people = dict(spec.get("people") or {})
    for key in people:
        if key not in PEOPLE_KEYS:
            raise InvalidInput(f"unknown people key {key!r}{_did_you_mean(key, PEOPLE_KEYS)}")
    origin = people.get("origin", "any")
    if origin not in ("any", "original", "synthetic"):
        raise InvalidInput(f"people.origin must be any, original or synthetic, got {origin!r}")
    ages = people.get("exclude_ages")
    if ages is not None:
        if not (isinstance(ages, (list, tuple)) and len(ages) == 2 and all(isinstance(a, int) for a in ages)
                and ages[0] <= ages[1]):
            raise InvalidInput(f"people.exclude_ages must be [first, last], got {ages!r}")
        ages = [int(ages[0]), int(ages[1])]
    kinds = people.get("synthetic_kinds", ["remask", "new-face"])
    for k in kinds:
        if k not in ("remask", "new-face"):
            raise InvalidInput(f"unknown synthetic kind {k!r} (remask, new-face)")
    balance = spec.get("balance", "none")
    if isinstance(balance, dict):
        for key, value in balance.items():
            if key not in BANDS:
                raise InvalidInput(f"balance target for unknown band {key!r}{_did_you_mean(key, BANDS)}")
            if not isinstance(value, int) or value < 0:
                raise InvalidInput(f"balance target for {key} must be a whole number >= 0, got {value!r}")
    elif balance not in ("none", "stage1", "stage2"):
        raise InvalidInput(f"balance must be none, stage1, stage2 or per-band targets, got {balance!r}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int):
        raise InvalidInput(f"seed must be a whole number, got {seed!r}")
    return {
        "people": {"origin": origin, "exclude_ages": ages, "exclude_bad": bool(people.get("exclude_bad", True)),
                   "synthetic_kinds": sorted(kinds), "tags": sorted(people.get("tags") or []),
                   **({"synthetic_tags": sorted(people["synthetic_tags"])} if people.get("synthetic_tags") else {})},
        "variant": str(spec.get("variant", "original")),
        "balance": balance,
        "seed": seed,
        "description": spec.get("description", ""),
    }


@dataclass
class Person:
    id: int
    age: int
    band: int
    origin: str
    kind: str | None


def _people(session, spec: dict) -> tuple[list[Person], list[Person]]:
    """(real people, synthetic people) passing the people filters."""
    p = spec["people"]
    bad = set(session.execute(select(Review.profile_id).where(Review.verdict == "bad")).scalars()) \
        if p["exclude_bad"] else set()
    real, synthetic = [], []
    for pid, age, origin, generator, tags in session.execute(
            select(Profile.id, Profile.age, Profile.origin, Profile.generator, Profile.tags).order_by(Profile.id)):
        if pid in bad:
            continue
        if p["exclude_ages"] and p["exclude_ages"][0] <= age <= p["exclude_ages"][1]:
            continue
        if p["tags"] and not set(tags or []) & set(p["tags"]):
            continue
        kind = (generator or {}).get("kind") if origin == "synthetic" else None
        person = Person(pid, age, labels.age_band(age), origin, kind)
        if origin == "synthetic":
            if kind in p["synthetic_kinds"] and (not p.get("synthetic_tags") or set(tags or []) & set(p["synthetic_tags"])):
                synthetic.append(person)
        else:
            real.append(person)
    if p["origin"] == "original":
        synthetic = []
    elif p["origin"] == "synthetic":
        real = []
    return real, synthetic


def _balance(real: list[Person], synthetic: list[Person], spec: dict) -> tuple[list[Person], dict]:
    """The people of the view: real ones plus synthetic ones drawn (seeded) to reach the band targets."""
    balance = spec["balance"]
    have = {b: sum(1 for x in real if x.band == b) for b in range(3)}
    if balance == "none":
        return real + synthetic, {}
    if isinstance(balance, dict):
        targets = {BANDS.index(k): v for k, v in balance.items()}
    else:
        top = max(have.values())
        targets = {b: top * (2 if balance == "stage2" else 1) for b in range(3)}
    rng = random.Random(spec["seed"])
    chosen = list(real)
    shortfall = {}
    for band, target in sorted(targets.items()):
        need = max(0, target - have[band])
        pool = sorted((x for x in synthetic if x.band == band), key=lambda x: x.id)
        if need > len(pool):
            shortfall[BANDS[band]] = need - len(pool)
            continue
        chosen += rng.sample(pool, need)
    return chosen, shortfall


def _variant(session, name: str) -> Variant | None:
    if name == "original":
        return None
    variant = session.execute(select(Variant).where(Variant.name == name)).scalars().first()
    if variant is None:
        names = ["original"] + list(session.execute(select(Variant.name)).scalars())
        raise NotFound(f"unknown variant {name!r}{_did_you_mean(name, names)} (variants: {', '.join(names)})")
    return variant


def _select_people(session, spec: dict) -> tuple[list[int], Variant | None]:
    real, synthetic = _people(session, spec)
    people, shortfall = _balance(real, synthetic, spec)
    if shortfall:
        need = ", ".join(f"{n} {band}" for band, n in shortfall.items())
        raise InvalidInput(f"not enough synthetic people to balance: {need} missing "
                           f"(maskkit generate person --band BAND --count N, or group ... --generate)")
    if not people:
        raise InvalidInput("the view selects no people: check its filters")
    return sorted(p.id for p in people), _variant(session, spec["variant"])


def _fill_members(session, view_id: int, people: list[int], variant: Variant | None) -> None:
    """Write the snapshot rows in the database itself (INSERT ... SELECT over a temporary table of the
    chosen people): labels are computed in SQL, so 189,000 rows take well under a second."""
    from sqlalchemy import case, column, literal, table as sql_table, text

    conn = session.connection()
    conn.execute(text("CREATE TEMPORARY TABLE IF NOT EXISTS tmp_view_people (profile_id INTEGER PRIMARY KEY)"))
    conn.execute(text("DELETE FROM tmp_view_people"))
    conn.execute(text("INSERT INTO tmp_view_people (profile_id) VALUES (:p)"), [{"p": p} for p in people])
    tmp = sql_table("tmp_view_people", column("profile_id"))
    gender = case((Profile.gender == "female", 1), else_=0)
    band = labels.band_sql(Profile.age)
    query = (select(literal(view_id), Image.id, Image.profile_id,
                    literal(variant.root_id) if variant is not None else Profile.root_id,
                    Derived.path if variant is not None else Image.path,
                    Image.mask, gender, Profile.age, band, labels.encode_any(Image.mask, gender, band))
             .select_from(Image).join(Profile, Profile.id == Image.profile_id)
             .join(tmp, tmp.c.profile_id == Image.profile_id).where(Image.damaged.is_(False)))
    if variant is not None:
        query = query.join(Derived, (Derived.image_id == Image.id) & (Derived.variant_id == variant.id)
                           & Derived.status.in_(DERIVED_USABLE), isouter=True)
        missing = session.execute(select(func.count()).select_from(query.where(Derived.id.is_(None)).subquery())).scalar_one()
        if missing:
            raise InvalidInput(f"{missing} image(s) of this view have no {variant.name!r} version yet: "
                               f"maskkit preprocess {variant.kind} (with the same parameters) first")
    session.execute(delete(ViewMember).where(ViewMember.view_id == view_id))
    session.execute(ViewMember.__table__.insert().from_select(
        ["view_id", "image_id", "profile_id", "root_id", "path", "mask", "gender", "age", "age_band", "label"], query))
    conn.execute(text("DELETE FROM tmp_view_people"))


MEMBER_COLUMNS = ("image_id", "profile_id", "root_id", "path", "mask", "gender", "age", "age_band", "label")


def _member_rows(session, view_id: int) -> list[dict]:
    columns = [getattr(ViewMember, c) for c in MEMBER_COLUMNS]
    return [dict(zip(MEMBER_COLUMNS, row)) for row in session.connection().execute(
        select(*columns).where(ViewMember.view_id == view_id).order_by(ViewMember.image_id))]


def get_view(catalog: Catalog, name: str) -> View:
    with catalog.session() as session:
        view = session.execute(select(View).where(View.name == name)).scalars().first()
        if view is None:
            names = list(session.execute(select(View.name).order_by(View.id)).scalars())
            raise NotFound(f"unknown view {name!r}{_did_you_mean(name, names)} "
                               f"(views: {', '.join(names) or 'none yet: maskkit group NAME'})")
        return view


def define_view(catalog: Catalog, name: str, spec: dict | None, *, replace: bool = False) -> View:
    """Create (or with replace=True redefine) a view and materialize it."""
    check_name(name, "view name")
    spec = normalize_spec(spec)
    with catalog.session() as session:
        view = session.execute(select(View).where(View.name == name)).scalars().first()
        if view is not None and not replace:
            if view.spec == spec:
                raise Conflict(f"view {name!r} exists already (group --refresh {name} to materialize it again)")
            raise Conflict(f"view {name!r} exists with another spec (--replace to redefine it)")
        people, variant = _select_people(session, spec)
        if view is None:
            view = View(name=name, spec=spec, created_at=utcnow())
            session.add(view)
            session.flush()
        view.spec = spec
        _materialize(session, view, people, variant)
        session.commit()
        return view


def _materialize(session, view: View, people: list[int], variant: Variant | None) -> None:
    _fill_members(session, view.id, people, variant)
    digest = hashlib.sha256()
    count, profiles = 0, set()
    for image_id, root_id, path, label, age, profile_id in session.connection().execute(
            select(ViewMember.image_id, ViewMember.root_id, ViewMember.path, ViewMember.label, ViewMember.age,
                   ViewMember.profile_id).where(ViewMember.view_id == view.id).order_by(ViewMember.image_id)):
        digest.update(f"{image_id}|{root_id}|{path}|{label}|{age}\n".encode())
        count += 1
        profiles.add(profile_id)
    view.content_hash = digest.hexdigest()
    view.people = len(profiles)
    view.images = count
    view.materialized_at = utcnow()
    session.add(view)


def refresh_view(catalog: Catalog, name: str) -> tuple[View, str]:
    """Materialize again from the spec; returns (view, old hash)."""
    view = get_view(catalog, name)
    with catalog.session() as session:
        view = session.get(View, view.id)
        old = view.content_hash
        people, variant = _select_people(session, view.spec)
        _materialize(session, view, people, variant)
        session.commit()
        return view, old


def snapshot(catalog: Catalog, name: str) -> list[dict]:
    view = get_view(catalog, name)
    with catalog.session() as session:
        return _member_rows(session, view.id)


def staleness(catalog: Catalog, name: str) -> dict:
    """Have the labels under the snapshot changed since it was materialized? (A relabel, a damaged or
    removed image, a person now reviewed as bad.) New people that would match the spec do not make a
    view stale: the snapshot stays what it was until it is materialized again. Computed in SQL."""
    from sqlalchemy import case

    view = get_view(catalog, name)
    gender = case((Profile.gender == "female", 1), else_=0)
    band = labels.band_sql(Profile.age)
    gone = Image.id.is_(None) | Image.damaged.is_(True)
    if view.spec["people"]["exclude_bad"]:
        gone = gone | ViewMember.profile_id.in_(select(Review.profile_id).where(Review.verdict == "bad"))
    relabeled = (ViewMember.label != labels.encode_any(Image.mask, gender, band)) | (ViewMember.age != Profile.age)
    with catalog.session() as session:
        removed, changed = session.connection().execute(
            select(func.coalesce(func.sum(case((gone, 1), else_=0)), 0),
                   func.coalesce(func.sum(case((gone, 0), (relabeled, 1), else_=0)), 0))
            .select_from(ViewMember).outerjoin(Image, Image.id == ViewMember.image_id)
            .outerjoin(Profile, Profile.id == Image.profile_id).where(ViewMember.view_id == view.id)).one()
    return {"stale": bool(changed or removed), "changed_labels": int(changed), "removed": int(removed), "added": 0,
            "hash": view.content_hash}


def view_people(catalog: Catalog, name: str) -> list[int]:
    view = get_view(catalog, name)
    with catalog.session() as session:
        return list(session.connection().execute(
            select(ViewMember.profile_id).where(ViewMember.view_id == view.id).distinct()).scalars())


def view_image_ids(catalog: Catalog, name: str) -> list[int]:
    return [m["image_id"] for m in snapshot(catalog, name)]


def class_counts(members: list[dict]) -> dict:
    people_band = {b: len({m["profile_id"] for m in members if m["age_band"] == i}) for i, b in enumerate(BANDS)}
    classes = [0] * labels.NUM_CLASSES
    for m in members:
        classes[m["label"]] += 1
    return {"people": len({m["profile_id"] for m in members}), "images": len(members), "people_by_band": people_band,
            "classes": classes}


def origin_counts(catalog: Catalog, members: list[dict]) -> dict:
    ids = {m["profile_id"] for m in members}
    out: dict[str, dict[str, int]] = {b: {} for b in BANDS}
    with catalog.session() as session:
        for pid, age, origin, generator in session.execute(
                select(Profile.id, Profile.age, Profile.origin, Profile.generator)):
            if pid in ids:
                key = origin if origin == "original" else f"synthetic {(generator or {}).get('kind', '?')}"
                band = BANDS[labels.age_band(age)]
                out[band][key] = out[band].get(key, 0) + 1
    return out


def diff_views(catalog: Catalog, a: str, b: str) -> dict:
    ma = {m["image_id"]: m for m in snapshot(catalog, a)}
    mb = {m["image_id"]: m for m in snapshot(catalog, b)}
    pa, pb = {m["profile_id"] for m in ma.values()}, {m["profile_id"] for m in mb.values()}
    relabeled = [i for i in ma.keys() & mb.keys() if ma[i]["label"] != mb[i]["label"]]
    repathed = [i for i in ma.keys() & mb.keys() if ma[i]["path"] != mb[i]["path"]]
    return {"only_a_people": len(pa - pb), "only_b_people": len(pb - pa), "both_people": len(pa & pb),
            "only_a_images": len(ma.keys() - mb.keys()), "only_b_images": len(mb.keys() - ma.keys()),
            "different_label": len(relabeled), "different_file": len(repathed),
            "classes_a": class_counts(list(ma.values()))["classes"], "classes_b": class_counts(list(mb.values()))["classes"]}


def load_spec_file(path) -> dict:
    from ..files import read_yaml_mapping

    return read_yaml_mapping(path, "view spec")


def balance_shortfall(catalog: Catalog, spec: dict) -> dict[str, int]:
    """Synthetic people per age band that a balanced view still lacks (band name -> count)."""
    normalized = normalize_spec(spec)
    with catalog.session() as session:
        real, synthetic = _people(session, normalized)
    _, shortfall = _balance(real, synthetic, normalized)
    return shortfall


def list_views(catalog: Catalog) -> list[dict]:
    """Every view with its counts, hash, variant, balance and whether it is stale."""
    with catalog.session() as session:
        views = list(session.execute(select(View).order_by(View.id)).scalars())
    rows = []
    for v in views:
        s = staleness(catalog, v.name)
        rows.append({"name": v.name, "people": v.people, "images": v.images, "hash": v.content_hash,
                     "variant": v.spec["variant"], "balance": v.spec["balance"], "stale": s["stale"],
                     "materialized_at": v.materialized_at.isoformat() if v.materialized_at else None})
    return rows
