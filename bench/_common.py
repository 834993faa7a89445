"""Shared helpers of the benchmarks: locating and building the benchmark datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "bench" / "out"


def facebench_large(path: Path | None = None) -> Path:
    """The competition-scale dataset, built with ../shared/facebench-large/build.py when missing."""
    target = Path(path) if path else OUT / "facebench-large"
    if (target / "train.csv").is_file():
        return target
    build = SHARED / "facebench-large" / "build.py"
    if not build.is_file():
        sys.exit(f"{build} not found: pass --data with a dataset in the competition layout")
    print(f"building {target} with {build} (about 4 minutes) ...", flush=True)
    subprocess.run([sys.executable, str(build), str(target)], check=True)
    return target


def facebench() -> Path:
    path = SHARED / "facebench"
    if not (path / "train" / "train.csv").is_file():
        sys.exit(f"{path} not found")
    return path


def facebench_catalog(work: Path):
    """A catalog in `work` with facebench's train set ingested (derived files under work/data): (catalog,
    the train images as preprocessing targets)."""
    import os

    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_train
    from maskkit.faces.preprocess import train_targets

    os.environ["MASKKIT_DATA"] = str(work / "data")
    catalog = open_catalog(work / "bench.db")
    ingest_train(catalog, facebench() / "train")
    targets, _ = train_targets(catalog)
    return catalog, targets
