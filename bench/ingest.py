"""Ingest speed on a competition-scale dataset (2,700 people, ~18,900 images), in one run:

  (a) baseline: read every byte of every image once and hash it (sequential sha1)
  (b) `maskkit ingest` into a new catalog
  (c) `maskkit ingest` again (nothing new)

Prints the times and the ratios b/a (goal <= 3) and c/a (goal <= 0.5). The page cache is warmed
first so that every phase reads from memory, as a second look at a dataset does.

    python bench/ingest.py [--data DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import facebench_large  # noqa: E402


def image_files(train: Path) -> list[Path]:
    files = []
    for dirpath, _dirs, names in os.walk(train / "images"):
        files.extend(Path(dirpath) / n for n in names if not n.startswith("."))
    return sorted(files)


def hash_all(files: list[Path]) -> int:
    total = 0
    for f in files:
        with open(f, "rb") as handle:
            data = handle.read()
        hashlib.sha1(data).hexdigest()
        total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="train folder (train.csv + images/); default: facebench-large")
    parser.add_argument("--repeat", type=int, default=3, help="take the best of N runs of each phase")
    args = parser.parse_args()
    train = facebench_large(args.data)

    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_train

    files = image_files(train)
    nbytes = hash_all(files)  # warm the page cache
    print(f"dataset: {train}  {len(files):,} images, {nbytes / 1e6:,.0f} MB, {os.cpu_count()} cores")

    best = {"a": float("inf"), "b": float("inf"), "c": float("inf")}
    for _ in range(args.repeat):
        t = time.perf_counter()
        hash_all(files)
        best["a"] = min(best["a"], time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            catalog = open_catalog(Path(tmp) / "bench.db")
            t = time.perf_counter()
            first = ingest_train(catalog, train)
            best["b"] = min(best["b"], time.perf_counter() - t)
            t = time.perf_counter()
            again = ingest_train(catalog, train)
            best["c"] = min(best["c"], time.perf_counter() - t)
            catalog.dispose()
        assert first.images_added == len(files) - first.junk_files or first.images_added > 0
        assert again.nothing_new, "the re-run added or changed something"

    a, b, c = best["a"], best["b"], best["c"]
    print(f"{'phase':<38}{'seconds':>9}{'images/s':>11}{'x (a)':>8}   goal")
    print(f"{'(a) read + sha1 every file':<38}{a:>9.2f}{len(files) / a:>11,.0f}{1:>8.2f}")
    print(f"{'(b) maskkit ingest, new catalog':<38}{b:>9.2f}{len(files) / b:>11,.0f}{b / a:>8.2f}   <= 3.0  "
          f"{'ok' if b / a <= 3 else 'MISSED'}")
    print(f"{'(c) maskkit ingest, re-run':<38}{c:>9.2f}{len(files) / c:>11,.0f}{c / a:>8.2f}   <= 0.5  "
          f"{'ok' if c / a <= 0.5 else 'MISSED'}")
    print(f"ingest found: {first.profiles_added:,} profiles, {first.images_added:,} images, "
          f"{len(first.damaged)} damaged, {first.junk_files} junk files")


if __name__ == "__main__":
    main()
