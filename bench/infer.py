"""Inference speed of `maskkit submit` on facebench's eval set vs the model's pure forward pass on random
tensors, in one run (same model, same batch size, CPU). Goal: submit >= 80% of pure forward.

    python bench/infer.py [--backbone efficientnet_lite0] [--image-size 224] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import facebench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_eval, ingest_train
    from maskkit.datasets.views import define_view
    from maskkit.evaluate.predict import load_model, resolve
    from maskkit.evaluate.submission import submit
    from maskkit.train.runs import start_run

    data = facebench()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = open_catalog(Path(tmp) / "bench.db")
        ingest_train(catalog, data / "train")
        ingest_eval(catalog, data / "eval")
        define_view(catalog, "fb", {"people": {"origin": "original"}})
        run = start_run(catalog, view="fb", runs_dir=Path(tmp) / "runs", overrides=[
            f"model.backbone={args.backbone}", f"data.image_size={args.image_size}", "schedule.epochs=1",
            "train.max_batches=1", "data.batch_size=8", "data.workers=0", "log.tensorboard=false"]).run
        model = load_model(resolve(catalog, run).runs[0])
        x = torch.randint(0, 255, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
        model.probs(x)
        n_eval = 385
        batches = -(-n_eval // args.batch_size)
        start = time.perf_counter()
        for _ in range(batches):
            model.probs(x)
        pure = batches * args.batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        result = submit(catalog, run, out=Path(tmp) / "sub.csv")
        sub = result.rows / (time.perf_counter() - start)
        catalog.dispose()
    print(f"facebench eval ({result.rows} images), {args.backbone} @{args.image_size}, batch {args.batch_size}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"{'pure forward on random tensors':<40}{pure:>9.1f} images/s")
    print(f"{'maskkit submit (decode, predict, write)':<40}{sub:>9.1f} images/s   {sub / pure:.0%} of pure forward "
          f"(goal >= 80%: {'ok' if sub / pure >= 0.8 else 'MISSED'})")


if __name__ == "__main__":
    main()
