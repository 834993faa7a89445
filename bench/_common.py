"""Shared helpers of the benchmarks: locating and building the benchmark datasets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "bench" / "out"


def maskkit(args: list[str], cwd: Path, log: Path, ok: tuple[int, ...] = (0,),
            prefix: tuple[str, ...] = ()) -> tuple[float, str]:
    """`maskkit ARGS` run as a user runs it (offline, wide tables) in `cwd`, under `prefix` (e.g. /usr/bin/time),
    its output appended to `log`: (wall seconds, stdout); an exit code not in `ok` stops the benchmark with it."""
    start = time.perf_counter()
    proc = subprocess.run([*prefix, "maskkit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    with open(log, "a") as handle:
        handle.write(f"$ maskkit {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode not in ok:
        sys.exit(f"maskkit {' '.join(args)} failed ({proc.returncode}); see {log}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds, proc.stdout


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
