"""How close maskkit's device paths come to what the device can do, in one table, on whatever device it finds.

    python bench/gpu.py --tiny --device cpu     # the CPU check (under 2 minutes; this is how it is tested)
    python bench/gpu.py                         # on a GPU server: efficientnet_lite0 at 224 px, ~8 minutes at most

Three ratios, each against a baseline measured in the same run:
  training   images/s of maskkit's fine-tuning epoch (loader, device augmentation, precision, layout, the
             optimizer step) / images/s of the same model, precision and optimizer on random tensors of the
             same shape already on the device (pure compute)           goal >= 0.8
  crop       images/s of `preprocess crop` (batched MTCNN, decode threads) / images/s of facenet's MTCNN
             called per image (the starting team's loop)               goal >= 10 on a GPU
  submit     images/s of submit's prediction path (files -> probabilities) / images/s of the same model's
             forward on random uint8 batches already on the device     goal >= 0.8
and the peak memory (GPU: torch.cuda.max_memory_allocated; CPU: the process's maximum resident set).
The dataset is made here (maskkit.demo_data, people drawn from nothing), so nothing needs to be downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cli(catalog: Path, *args: str) -> str:
    from typer.testing import CliRunner

    from maskkit.cli import app

    result = CliRunner().invoke(app, ["--catalog", str(catalog), *map(str, args)])
    if result.exit_code != 0:
        sys.exit(f"maskkit {' '.join(map(str, args))} failed: {result.output[-2000:]}")
    return result.output


def bench_training(catalog, runs: Path, overrides: list[str], epochs: int, device) -> dict:
    """maskkit's epoch against pure compute, same model, precision, layout, batch size and step count."""
    import torch

    from maskkit.train import accel
    from maskkit.train.finetune import FineTuneTrainer
    from maskkit.train.job import prepare
    from maskkit.train.config import load_config

    cfg = load_config(None, overrides)
    job = prepare(catalog, "all", "h", 1, cfg)
    trainer = FineTuneTrainer(catalog, job, runs)
    trainer._build()
    trainer._train_epoch(0)  # warm-up: workers start, kernels load (and compile, when asked)
    sync(device)
    start = time.perf_counter()
    steps = 0
    for epoch in range(1, epochs + 1):
        trainer._train_epoch(epoch)
        steps += trainer.steps_per_epoch
    sync(device)
    seconds = time.perf_counter() - start
    batch = cfg["data"]["batch_size"]
    images = steps * batch
    size = cfg["data"]["image_size"]
    x = torch.randn(batch, 3, size, size, device=device)
    if trainer.layout_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,), device=device)
    net, opt = trainer.step_net, trainer.optimizer
    net.train()

    def step():
        with accel.autocast(device, trainer.dtype):
            loss = trainer.criterion(accel.fp32(net(x)), y)
        opt.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(opt)
        trainer.scaler.update()

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    pure = time.perf_counter() - start
    return {"images": images, "maskkit_s": seconds, "pure_s": pure,
            "precision": accel.precision_name(trainer.dtype), "channels_last": trainer.layout_last}


def bench_crop(catalog, device: str, limit: int) -> dict:
    from maskkit.faces.crop import CropParams
    from maskkit.faces.preprocess import Preprocessor, ensure_variant, train_targets
    from preprocess import baseline_crops

    targets, _ = train_targets(catalog)
    targets = targets[:limit]
    params = CropParams()
    with tempfile.TemporaryDirectory() as tmp:
        base_s, _ = _baseline(baseline_crops, [t.source for t in targets], Path(tmp), params, device)
    variant = ensure_variant(catalog, "crop", params)
    report = Preprocessor(catalog, variant, device=device).run(targets)
    return {"images": len(targets), "maskkit_s": report.seconds, "baseline_s": base_s}


def _baseline(fn, paths, out, params, device):
    if device == "cpu":
        return fn(paths, out, params)
    # the same per-image loop, with MTCNN on the device
    import facenet_pytorch

    real = facenet_pytorch.MTCNN
    facenet_pytorch.MTCNN = lambda **kw: real(**{**kw, "device": device})
    try:
        return fn(paths, out, params)
    finally:
        facenet_pytorch.MTCNN = real


def bench_submit(catalog, run_name: str, device) -> dict:
    import numpy as np
    import torch

    from maskkit.evaluate.predict import get_run, load_model, predict_paths
    from maskkit.evaluate.submission import _eval_root, eval_paths

    run = get_run(catalog, run_name)
    model = load_model(run, str(device))
    root_id, _ = _eval_root(catalog, None)
    paths = eval_paths(catalog, root_id, "original")
    predict_paths([model], paths[: min(len(paths), 64)])  # warm-up
    sync(device)
    start = time.perf_counter()
    predict_paths([model], paths)
    sync(device)
    seconds = time.perf_counter() - start
    batch = torch.randint(0, 256, (64, 3, model.size, model.size), dtype=torch.uint8)
    model.probs(batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(int(np.ceil(len(paths) / 64))):
        model.probs(batch)
    sync(device)
    pure = time.perf_counter() - start
    return {"images": len(paths), "maskkit_s": seconds, "pure_s": pure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda[:N]")
    parser.add_argument("--tiny", action="store_true", help="a small model and dataset (the CPU check)")
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from maskkit.catalog import open_catalog
    from maskkit.demo_data import make_dataset

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.tiny:
        people, eval_people, size, backbone, batch, epochs, crop_limit = 16, 8, 64, "test_efficientnet", 32, 2, 24
    else:
        people, eval_people, size, backbone, batch, epochs, crop_limit = 300, 150, 224, "efficientnet_lite0", 64, 2, 600
    workers = 0 if args.tiny else min(8, max(1, (os.cpu_count() or 2) - 1))
    overrides = [f"model.backbone={backbone}", "model.pretrained=none", f"data.image_size={size}",
                 f"data.batch_size={batch}", f"data.workers={workers}", "log.tensorboard=false",
                 "train.recipe=finetune", "model.head=multi", "model.prior=none", f"train.device={device}",
                 "schedule.epochs=1"]
    table = {"device": str(device), "torch": torch.__version__, "tiny": args.tiny}
    if device.type == "cuda":
        table["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MASKKIT_DATA"] = str(tmp / "work")
        data = make_dataset(tmp / "data", people=people, eval_people=eval_people, seed=0, size=(192, 256),
                            messy=False)
        db = tmp / "c.db"
        cli(db, "ingest", data["train"], "--eval", data["eval"])
        cli(db, "group", "all")
        cli(db, "split", "h", "--view", "all", "--val", "0.2")
        catalog = open_catalog(db)
        runs = tmp / "runs"
        table["training"] = bench_training(catalog, runs, overrides, epochs, device)
        cli(db, "train", "--view", "all", "--split", "h", "--runs-dir", runs, "--name", "g", *overrides)
        table["submit"] = bench_submit(catalog, "g", device)
        table["crop"] = bench_crop(catalog, "cuda" if device.type == "cuda" else "cpu", crop_limit)
        catalog.dispose()
    table["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    table["seconds"] = time.perf_counter() - started
    print_table(table)
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))


def print_table(t: dict) -> None:
    tr, cr, sb = t["training"], t["crop"], t["submit"]
    rows = [
        ("training", tr["images"] / tr["maskkit_s"], tr["images"] / tr["pure_s"], "pure compute", 0.8),
        ("crop", cr["images"] / cr["maskkit_s"], cr["images"] / cr["baseline_s"], "per-image MTCNN", 10.0),
        ("submit", sb["images"] / sb["maskkit_s"], sb["images"] / sb["pure_s"], "pure forward", 0.8),
    ]
    print(f"device {t['device']}{' (' + t['gpu'] + ')' if 'gpu' in t else ''}, torch {t['torch']}, "
          f"{'tiny' if t['tiny'] else 'full'} setting; training in {tr['precision']}, "
          f"channels_last {'on' if tr['channels_last'] else 'off'}")
    print(f"{'stage':<10}{'maskkit img/s':>15}{'baseline img/s':>16}  {'baseline':<17}{'ratio':>7}{'goal':>7}")
    for name, ours, base, what, goal in rows:
        ratio = ours / base
        print(f"{name:<10}{ours:>15.1f}{base:>16.1f}  {what:<17}{ratio:>7.2f}{goal:>7.1f}"
              f"  {'ok' if ratio >= goal else 'below'}")
    print(f"peak memory {t['peak_memory_mb']:.0f} MB; {t['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
