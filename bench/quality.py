"""The default recipe end to end on facebench, as a new user runs it, scored on the dev eval answers.

    python bench/quality.py                      # default config, 5 folds
    python bench/quality.py --folds 3 model.drop_rate=0.3 ...   # any train overrides
    python bench/quality.py --baseline           # also the fine-tuned recipe (model.freeze_backbone=false,
                                                 # holdout, ~15 min on 2 CPU cores) in the same run, for the ratio

Steps (each timed): ingest train + eval -> preprocess crop (train + eval) -> group (crop view) ->
train --folds K (the fold models become one ensemble, decisions tuned out-of-fold) -> submit --score.
Prints macro F1, accuracy and per-label F1 on the dev eval set, the crop fallbacks, and wall times.
Works in a temporary folder (or --out); reads ../shared/facebench (skips cleanly when absent).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "facebench"


def sh(args: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(["maskkit", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    with open(log, "a") as handle:
        handle.write(f"$ maskkit {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        sys.exit(f"maskkit {' '.join(args)} failed ({proc.returncode}); see {log}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def label_f1(submission: Path, answers: Path) -> dict:
    from sklearn.metrics import f1_score

    truth = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(open(answers))}
    pred = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(open(submission))}
    y = [truth[k] for k in pred]
    p = [pred[k] for k in pred]
    out = {"macro_f1": f1_score(y, p, labels=list(range(18)), average="macro", zero_division=0),
           "accuracy": sum(a == b for a, b in zip(y, p)) / len(y)}
    from maskkit import labels

    for k, (name, n) in enumerate((("mask", 3), ("gender", 2), ("age", 3))):
        out[f"{name}_f1"] = f1_score([labels.fields(c)[k] for c in y], [labels.fields(c)[k] for c in p],
                                     labels=list(range(n)), average="macro", zero_division=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train config overrides key=value")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--baseline", action="store_true", help="also the fine-tuned recipe, for the ratio")
    args = parser.parse_args()
    if not (args.data / "train" / "train.csv").is_file():
        print(f"skipped: no facebench at {args.data}")
        return
    work = (args.out or Path(tempfile.mkdtemp(prefix="maskkit-quality-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quality.log"
    answers = args.data / "eval" / "answers.csv"
    times = {}
    times["ingest"], _ = sh(["ingest", str(args.data / "train"), "--eval", str(args.data / "eval")], work, log)
    times["crop"], crop_out = sh(["preprocess", "crop", "--target", "all"], work, log)
    _, report = sh(["preprocess", "--report", "crop", "--sheet", str(work / "crop_sheet.png")], work, log)
    times["group"], _ = sh(["group", "q", "--variant", "crop"], work, log)
    times["train"], train_out = sh(["train", "--view", "q", "--folds", str(args.folds), "--name", "q",
                                    *args.overrides], work, log)
    times["submit"], _ = sh(["submit", "q", "--score", str(answers), "--out", str(work / "submission.csv")], work, log)
    scores = label_f1(work / "submission.csv", answers)
    total = sum(times.values())
    print(f"facebench dev eval ({args.folds} folds, overrides: {' '.join(args.overrides) or 'none'})")
    print(f"  macro F1 {scores['macro_f1']:.4f}  accuracy {scores['accuracy']:.4f}  mask F1 {scores['mask_f1']:.3f}  "
          f"gender F1 {scores['gender_f1']:.3f}  age F1 {scores['age_f1']:.3f}")
    for line in crop_out.splitlines():
        if line.startswith("crop "):
            print("  " + line.strip())
    oof = [line for line in train_out.splitlines() if "argmax" in line or "offsets" in line]
    for line in oof:
        print("  out-of-fold " + " ".join(line.replace("│", " ").split()))
    print("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {total:.0f} s "
          f"({total / 60:.1f} min)")
    result = {"scores": scores, "seconds": times, "total_seconds": total, "overrides": args.overrides}
    if args.baseline:
        t, _ = sh(["train", "--view", "q", "model.freeze_backbone=false", "model.prior=none", "model.head=single",
                   "schedule.epochs=6", "loss.class_weights=none", "data.weighted_sampler=false", "model.drop_rate=0.2",
                   "data.batch_size=32", "optim.weight_decay=0.01"], work, log)
        _, runs = sh(["runs", "--json"], work, log)
        name = json.loads(runs)[-1]["name"]
        sh(["submit", name, "--score", str(answers), "--out", str(work / "baseline.csv")], work, log)
        base = label_f1(work / "baseline.csv", answers)
        print(f"  baseline (fine-tuned, holdout): macro F1 {base['macro_f1']:.4f} in {t:.0f} s; "
              f"ratio {scores['macro_f1'] / max(base['macro_f1'], 1e-9):.2f}x F1, {total / t:.2f}x time")
        result["baseline"] = {"scores": base, "seconds": t}
    (work / "quality.json").write_text(json.dumps(result, indent=1))
    print(f"  details: {log}")


if __name__ == "__main__":
    main()
