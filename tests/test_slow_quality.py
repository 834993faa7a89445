"""The default recipe end to end on real faces (bench/quality.py with 2 folds): slow (~4 min on 2 CPU cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_recipe_learns_faces(facebench, tmp_path):
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(facebench), "--out", str(out),
                           "--folds", "2", "--large-people", "0", "--no-dev", "--resamples", "200"],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "quality.json").read_text())
    scores = result["rows"][0]  # the default recipe, out of fold over every facebench person
    # chance is 1/18 (0.056) macro F1; the recipe must know masks, and faces well beyond chance
    assert scores["oof_mask_f1"] > 0.8 and scores["oof_gender_f1"] > 0.65 and scores["oof_f1"] > 0.35, scores
    assert scores["oof_low"] <= scores["oof_f1"] <= scores["oof_high"]
