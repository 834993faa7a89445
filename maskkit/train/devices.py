"""Folds spread over devices: `train --folds K --devices 0,1,...` trains one fold per device at a time, each
in its own process (`maskkit train --split S --fold k --name N train.device=D`), the next fold starting on
whichever device frees first. Every fold is an ordinary run in the catalog, so a kill keeps the finished
folds and a rerun continues (`folds.cross_validate`). On a CPU, `--devices cpu,cpu` runs two folds at once,
each with half the cores' threads (that is how it is tested).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import InvalidInput, MaskkitError
from .schema import DEVICE_PATTERN


def parse_devices(text: str | None) -> list[str]:
    """'0,1' -> ['cuda:0', 'cuda:1']; 'cpu,cpu' and 'cuda:0,cuda:2' as written. Checked against what torch sees."""
    if not text:
        return []
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit():
            part = f"cuda:{part}"
        if part == "auto" or not DEVICE_PATTERN.match(part):
            raise InvalidInput(f"--devices takes GPU numbers or devices (0,1 / cuda:0,cuda:1 / cpu,cpu), got {part!r}")
        out.append("cuda:0" if part == "cuda" else part)
    gpus = [d for d in out if d.startswith("cuda")]
    if gpus:
        import torch

        count = torch.cuda.device_count()
        missing = sorted({d for d in gpus if int(d.split(":")[1]) >= count})
        if missing:
            raise InvalidInput(f"--devices {text}: torch sees {count} CUDA device(s), not {', '.join(missing)}")
    return out


def _threads_each(devices: list[str]) -> int:
    from ..cpus import usable_cores

    return max(1, usable_cores() // max(1, sum(d == "cpu" for d in devices)))


def run_folds(catalog_url: str, *, view: str, split: str, folds: list[int], names: dict[int, str], devices: list[str],
              config_file=None, overrides=None, runs_dir="runs", progress=None) -> None:
    """Train `folds` (fold -> run name in `names`) over `devices`, one process per fold; raise on the first
    fold that fails (the others are stopped; what finished stays in the catalog for the rerun)."""
    logs = Path(runs_dir) / ".folds"
    logs.mkdir(parents=True, exist_ok=True)
    queue = list(folds)
    running: dict[str, tuple[subprocess.Popen, int, Path]] = {}
    done = 0
    threads = _threads_each(devices)
    try:
        while queue or running:
            for slot, device in enumerate(devices):
                key = f"{slot}:{device}"
                if key in running or not queue:
                    continue
                k = queue.pop(0)
                cmd = [sys.executable, "-m", "maskkit", "--catalog", catalog_url, "train", "--view", view,
                       "--split", split, "--fold", str(k), "--name", names[k], "--runs-dir", str(runs_dir),
                       "--allow-stale"]
                if config_file:
                    cmd += ["-c", str(config_file)]
                cmd += [*(overrides or []), f"train.device={device}"]
                env = dict(os.environ)
                if device == "cpu":
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
                log = logs / f"{names[k]}.log"
                running[key] = (subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT), k, log)
            time.sleep(0.2)
            for key, (proc, k, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[key]
                if code != 0:
                    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
                    raise MaskkitError(f"fold {k} (run {names[k]} on {key.split(':', 1)[1]}) failed with exit code "
                                       f"{code}: {tail[0] if tail else 'no output'} (log: {log}); run the same "
                                       "command again to continue from the folds that finished")
                done += 1
                if progress:
                    progress(f"folds on {len(devices)} devices", done, len(folds))
    finally:
        for proc, _k, _log in running.values():
            proc.terminate()
        for proc, _k, _log in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
