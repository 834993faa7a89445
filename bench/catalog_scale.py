"""Catalog operations at 10x competition scale (27,000 people / 189,000 images; synthetic rows, no image
files), on SQLite and, when a server is at hand, PostgreSQL, in one run:

  stats            maskkit stats (all counts)
  view             materialize a view of every person (189,000 snapshot rows + content hash)
  split            a stratified 5-fold profile-level split of that view
  audit queue      the unreviewed-people queue, a reviewer's resume point and progress

Goal: each under 1 s on SQLite. Prints seconds per operation and backend, the PostgreSQL / SQLite
ratio, and SQLite's EXPLAIN QUERY PLAN for the queries behind them.

    python bench/catalog_scale.py [--people 27000] [--pg URL]   (default: a throwaway server if installed)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from maskkit.labels import BAND_TYPICAL_AGES  # noqa: E402


def fill(catalog, people: int, seed: int = 0) -> None:
    from sqlalchemy import insert

    from maskkit import labels
    from maskkit.catalog.models import DataRoot, Image, Profile, Review

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    with catalog.engine.begin() as conn:
        conn.execute(insert(DataRoot), [dict(id=1, name="train:scale", path="/nonexistent/scale", created_at=now)])
        rows, images, reviews = [], [], []
        for i in range(1, people + 1):
            gender = "female" if rng.random() < 0.61 else "male"
            young, middle, old = BAND_TYPICAL_AGES
            age = rng.choice([rng.randint(*young), rng.randint(*middle), old[0]]) if rng.random() < 0.93 else rng.randint(*old)
            folder = f"{i:06d}_{gender}_Asian_{age}"
            rows.append(dict(id=i, root_id=1, person_id=f"{i:06d}", folder=folder, gender=gender, race="Asian", age=age,
                             orig_gender=gender, orig_race="Asian", orig_age=age, origin="original", csv_row=i + 1,
                             created_at=now))
            for k, kind in enumerate(labels.IMAGE_KINDS):
                m = labels.KIND_MASK[kind]
                images.append(dict(id=(i - 1) * 7 + k + 1, profile_id=i, kind=kind, mask=m, orig_mask=m,
                                   path=f"images/{folder}/{kind}.jpg", size=30000 + k, mtime_ns=1_700_000_000_000_000_000,
                                   sha1=f"{i:034d}{k:06d}", width=384, height=512, damaged=False, origin="original",
                                   created_at=now))
            if rng.random() < 0.3:
                reviews.append(dict(profile_id=i, reviewer=rng.choice(["ann", "bob", "cat"]), verdict="accept",
                                    created_at=now))
        for start in range(0, len(rows), 10000):
            conn.execute(insert(Profile), rows[start:start + 10000])
        for start in range(0, len(images), 20000):
            conn.execute(insert(Image), images[start:start + 20000])
        conn.execute(insert(Review), reviews)
    catalog.optimize()  # as maskkit ingest does after adding images


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_ops(catalog) -> dict[str, float]:
    import sklearn.model_selection  # noqa: F401  (imported once per process; not part of the timings)

    from maskkit.catalog.stats import catalog_stats
    from maskkit.datasets.splits import make_split
    from maskkit.datasets.views import define_view
    from maskkit.review.queue import build_queue, progress, resume_index

    def queue():
        q = build_queue(catalog, order="unreviewed")
        resume_index(catalog, q, "ann")
        progress(catalog, q)

    return {
        "stats": timed(lambda: catalog_stats(catalog)),
        "view": timed(lambda: define_view(catalog, "everyone", {"people": {"origin": "original"}})),
        "split": timed(lambda: make_split(catalog, "k5", "everyone", folds=5, seed=0)),
        "audit queue": timed(queue),
    }


PLANS = {
    "stats: images per class": "SELECT image.mask, profile.gender, count(*) FROM image JOIN profile ON profile.id = "
                               "image.profile_id GROUP BY image.mask, profile.gender",
    "view: member images": "SELECT image.id, image.profile_id FROM image JOIN profile ON profile.id = image.profile_id "
                           "WHERE image.damaged = 0 ORDER BY image.id",
    "split: a view's members": "SELECT profile_id FROM view_member WHERE view_id = 1",
    "audit: reviewed people": "SELECT profile_id FROM review WHERE verdict IN ('accept', 'fix', 'bad')",
    "audit: a reviewer's visits": "SELECT profile_id FROM review WHERE reviewer = 'ann' AND verdict IN ('accept','skip')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=27000)
    parser.add_argument("--pg", help="PostgreSQL admin URL (default: a throwaway server when installed)")
    args = parser.parse_args()
    from sqlalchemy import text

    from maskkit.catalog import open_catalog

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = open_catalog(Path(tmp) / "scale.db")
        t = timed(lambda: fill(catalog, args.people))
        print(f"SQLite catalog filled with {args.people:,} people / {args.people * 7:,} images in {t:.1f} s")
        results["sqlite"] = run_ops(catalog)
        with catalog.engine.connect() as conn:
            plans = {name: [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
                     for name, sql in PLANS.items()}
        catalog.dispose()
    cluster = None
    admin = args.pg
    if not admin:
        try:
            import pg_throwaway

            cluster = pg_throwaway.start()
            admin = cluster.url
        except Exception as exc:
            print(f"(no PostgreSQL: {exc})")
    if admin:
        import pg_throwaway

        url = pg_throwaway.create_database(admin, "maskkit_scale_bench")
        catalog = open_catalog(url)
        t = timed(lambda: fill(catalog, args.people))
        print(f"PostgreSQL catalog filled in {t:.1f} s")
        results["postgresql"] = run_ops(catalog)
        catalog.dispose()
    if cluster:
        pg_throwaway.stop(cluster)
    print(f"\n{'operation':<14}{'SQLite s':>10}{'PostgreSQL s':>14}{'PG/SQLite':>11}   goal: SQLite < 1 s")
    for op, secs in results["sqlite"].items():
        pg = results.get("postgresql", {}).get(op)
        pg_text = f"{pg:>14.3f}{pg / secs:>11.2f}" if pg is not None else f"{'-':>14}{'-':>11}"
        print(f"{op:<14}{secs:>10.3f}{pg_text}   {'ok' if secs < 1 else 'MISSED'}")
    print("\nSQLite query plans (EXPLAIN QUERY PLAN):")
    for name, lines in plans.items():
        print(f"  {name}: " + " | ".join(lines))


if __name__ == "__main__":
    main()
