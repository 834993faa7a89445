"""Training input pipeline on facebench, efficientnet_lite0 at 224 on CPU, in one run:

  (a) input pipeline (the DataLoader's batches), decoding every image every epoch (data.cache=false)
  (b) input pipeline from the decoded cache (uint8 memmap built once)      goal: b >= 3x a
  (c) training steps fed by the cached pipeline
  (d) the same training steps on random tensors (pure compute)              goal: c within 10% of d

    python bench/train_input.py [--batches 12] [--batch-size 32] [--workers 2]
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
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_train
    from maskkit.datasets.views import define_view
    from maskkit.train.finetune import FineTuneTrainer
    from maskkit.train.job import prepare
    from maskkit.train.config import load_config
    from maskkit.train.data import prepare_batch

    with tempfile.TemporaryDirectory() as tmp:
        catalog = open_catalog(Path(tmp) / "bench.db")
        ingest_train(catalog, facebench() / "train")
        define_view(catalog, "fb", {"people": {"origin": "original"}})
        overrides = [f"data.batch_size={args.batch_size}", f"data.workers={args.workers}", "log.tensorboard=false",
                     f"data.cache_dir={tmp}/cache"]

        def pipeline_rate(cache: bool) -> float:
            cfg = load_config(None, overrides + [f"data.cache={str(cache).lower()}"])
            job = prepare(catalog, "fb", None, None, cfg)
            trainer = FineTuneTrainer(catalog, job, Path(tmp) / "runs")
            trainer._build()
            loader = trainer._loader(job.train_rows, True, 0)
            it = iter(loader)
            next(it)  # workers started
            start, n = time.perf_counter(), 0
            for i, (x, _, _) in enumerate(it):  # batches as the loader delivers them (uint8, augmented geometry);
                n += len(x)                          # colour jitter + normalisation run on the training device
                if i + 1 >= args.batches:
                    break
            return n / (time.perf_counter() - start), trainer, job

        a, _, _ = pipeline_rate(False)
        b, trainer, job = pipeline_rate(True)

        model, criterion, optimizer = trainer.model, trainer.criterion, trainer.optimizer
        model.train()

        def step(x, y):
            out = model(x)
            loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        loader = trainer._loader(job.train_rows, True, 1)
        it = iter(loader)
        first = next(it)
        step(prepare_batch(first[0], job.cfg["augment"]), first[1])  # warm-up
        start, n = time.perf_counter(), 0
        for i, (x, y, _) in enumerate(it):
            step(prepare_batch(x, job.cfg["augment"]), y)
            n += len(x)
            if i + 1 >= args.batches:
                break
        c = n / (time.perf_counter() - start)
        x = torch.randn(args.batch_size, 3, 224, 224)
        y = torch.randint(0, 18, (args.batch_size,))
        step(x, y)
        start = time.perf_counter()
        for _ in range(args.batches):
            step(x, y)
        d = args.batches * args.batch_size / (time.perf_counter() - start)
        catalog.dispose()
    print(f"facebench train fold, efficientnet_lite0 @224, batch {args.batch_size}, {args.workers} workers, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"{'':<46}{'images/s':>10}{'ratio':>8}")
    print(f"{'(a) input pipeline, decode every epoch':<46}{a:>10.1f}{1:>8.2f}")
    print(f"{'(b) input pipeline, decoded cache':<46}{b:>10.1f}{b / a:>8.2f}   goal >= 3: {'ok' if b / a >= 3 else 'MISSED'}")
    print(f"{'(d) training steps, random tensors':<46}{d:>10.1f}{1:>8.2f}")
    print(f"{'(c) training steps, cached pipeline':<46}{c:>10.1f}{c / d:>8.2f}   overhead {d / c - 1:+.1%} "
          f"(goal <= 10%: {'ok' if d / c - 1 <= 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
