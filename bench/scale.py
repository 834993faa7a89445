"""The default recipe at competition scale, end to end, as a user runs it: facebench-large (2,699 people,
18,893 photos by default) through `ingest`, `preprocess crop`, `group` and `train --folds 5`, each stage timed
with its photos/s and its peak memory (`/usr/bin/time -v`: the largest resident set of the stage's processes).

    python bench/scale.py                                   # all 2,699 people (builds bench/out/facebench-large)
    python bench/scale.py --data bench/out/facebench-large-600 --out bench/out/scale-600    # a smaller build
    python bench/scale.py --out bench/out/scale             # a kept folder resumes: finished stages are read back

The feature pass is the part of `train` before the first fold: from the stage's start to the last feature-cache
shard it wrote (runs/cache). The out-of-fold figures are `maskkit eval scale --json`'s. Writes scale.json in --out. Goal (issue 20): the whole job in at most 30 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import OUT, facebench_large, maskkit  # noqa: E402

GOAL_MINUTES = 30  # issue 20: the whole job on 2 cores


def run_stage(name: str, args: list[str], work: Path, log: Path) -> dict:
    """One `maskkit` command under /usr/bin/time -v: wall seconds and the peak resident set (MiB)."""
    timing = work / f".{name}.time"
    timing.unlink(missing_ok=True)
    prefix = ("/usr/bin/time", "-v", "-o", str(timing)) if Path("/usr/bin/time").is_file() else ()
    seconds, _ = maskkit(args, work, log, prefix=prefix)
    peak = None
    if timing.is_file():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
        peak = round(int(found.group(1)) / 1024) if found else None
    return {"seconds": round(seconds, 1), "peak_mib": peak}


FIGURES = {"oof_macro_f1": "macro_f1", "mask_f1": "mask_f1", "gender_f1": "gender_f1", "age_f1": "age_f1"}


def kfold_figures(eval_json: str) -> dict:
    """The out-of-fold figures of `maskkit eval ENSEMBLE --json` (its tuned decisions), by this bench's names."""
    try:
        metrics = json.loads(eval_json)["metrics"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {ours: float(metrics[theirs]) for ours, theirs in FIGURES.items() if theirs in metrics}


def photos_in(data: Path) -> int:
    return sum(1 for p in (data / "images").rglob("*") if p.is_file() and not p.name.startswith("."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a dataset in the competition layout "
                        "(default: bench/out/facebench-large, built when missing)")
    parser.add_argument("--out", type=Path, default=OUT / "scale")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    data = facebench_large(args.data)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log, result_file = work / "scale.log", work / "scale.json"
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    photos = photos_in(data)
    stages = [
        ("ingest", ["ingest", str(data.resolve())]),
        ("crop", ["preprocess", "crop"]),
        ("group", ["group", "scale", "--variant", "crop"]),
        ("train", ["train", "--view", "scale", "--folds", str(args.folds), "--name", "scale"]),
    ]
    for name, stage_args in stages:
        if name in results:
            print(f"{name:>6}: done before ({results[name]['seconds']:.0f} s)")
            continue
        print(f"{name:>6}: maskkit {' '.join(stage_args)} ...", flush=True)
        started = time.time()
        done = run_stage(name, stage_args, work, log)
        done["photos_per_s"] = round(photos / done["seconds"], 1) if done["seconds"] else None
        if name == "train":
            shards = [p.stat().st_mtime for p in (work / "runs" / "cache").rglob("*") if p.is_file()]
            if shards:
                done["feature_pass_seconds"] = round(max(shards) - started, 1)
                done["feature_pass_photos_per_s"] = round(photos / done["feature_pass_seconds"], 1)
            done.update(kfold_figures(maskkit(["eval", "scale", "--json"], work, log)[1]))
        results[name] = done
        result_file.write_text(json.dumps(results, indent=1))
    total = sum(r["seconds"] for r in results.values())
    print(f"\n{photos} photos, {args.folds} folds, {os.cpu_count()} cores")
    print(f"{'stage':>8} {'seconds':>8} {'photos/s':>9} {'peak MiB':>9}")
    for name, r in results.items():
        print(f"{name:>8} {r['seconds']:>8.0f} {r['photos_per_s'] or 0:>9.1f} {r['peak_mib'] or 0:>9}")
    print(f"{'total':>8} {total:>8.0f}   ({total / 60:.1f} min; goal: at most {GOAL_MINUTES} min)")
    train = results.get("train", {})
    if "feature_pass_seconds" in train:
        print(f"feature pass {train['feature_pass_seconds']:.0f} s ({train['feature_pass_photos_per_s']:.1f} photos/s); "
              f"the {args.folds} folds and their recording the rest of train")
    if "oof_macro_f1" in train:
        print(f"out-of-fold macro F1 {train['oof_macro_f1']:.3f} (mask {train['mask_f1']:.3f}, gender "
              f"{train['gender_f1']:.3f}, age {train['age_f1']:.3f})")


if __name__ == "__main__":
    main()
