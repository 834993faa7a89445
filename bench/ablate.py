"""The imbalance remedies side by side on facebench-large, as a user runs them (`maskkit ablate`).

    python bench/ablate.py                         # builds ../shared/facebench-large into bench/out/ if needed
    python bench/ablate.py --out DIR --remedies none,logit-adjust model.prior=auto ...   # train overrides too

Steps (each timed): ingest -> preprocess crop -> group (crop view) -> maskkit ablate (every remedy on one
fixed person-level holdout). The catalog lives in --out (default bench/out/ablate); a second run reuses
what is there (ingest skips unchanged files, crops and runs are reused), so interrupting it loses nothing.
Prints the ablation table; ablation.csv / .json / .png land in OUT/runs/ablate-fc-s0/. The goal on this
2-core CPU: the ablate step within 20 minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import OUT, facebench_large  # noqa: E402


def step(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    print(f"$ maskkit {' '.join(args)}", flush=True)
    proc = subprocess.run(["maskkit", *args], cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"})
    if proc.returncode != 0:
        sys.exit(f"maskkit {' '.join(args)} failed ({proc.returncode})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a dataset in the competition layout (default: facebench-large)")
    parser.add_argument("--out", type=Path, default=OUT / "ablate", help="catalog and runs folder")
    parser.add_argument("--remedies", help="comma-separated subset of the remedies")
    parser.add_argument("--synthetic-cap", type=int, help="at most this many synthetic people per band and kind")
    parser.add_argument("overrides", nargs="*", help="training config overrides key=value")
    args = parser.parse_args()
    data = facebench_large(args.data)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    catalog = ["--catalog", str(out / "catalog.db")]
    times = {"ingest": step([*catalog, "ingest", str(data)], out),
             "crop": step([*catalog, "preprocess", "crop"], out)}
    views = subprocess.run(["maskkit", *catalog, "group", "--list", "--json"], cwd=out, capture_output=True, text=True)
    if '"fc"' not in views.stdout:
        times["group"] = step([*catalog, "group", "fc", "--variant", "crop"], out)
    command = [*catalog, "ablate", "--view", "fc", "--runs-dir", str(out / "runs")]
    if args.remedies:
        command += ["--remedies", args.remedies]
    if args.synthetic_cap is not None:
        command += ["--synthetic-cap", str(args.synthetic_cap)]
    times["ablate"] = step(command + list(args.overrides), out)
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; ablate {times['ablate'] / 60:.1f} min (goal: <= 20 min on 2 CPU cores)")


if __name__ == "__main__":
    main()
