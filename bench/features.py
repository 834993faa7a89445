"""The feature pass of the default recipe (frozen backbone + face prior), images/s, in one run:

  (a) baseline: one process, the PyTorch CNN and then the prior per batch (the pass before these changes)
  (b) FeatureCache with the prior in worker processes beside the PyTorch CNN, written in shards
  (c) maskkit: as (b), the backbone on ONNX Runtime (MASKKIT_FEATURE_RUNTIME=auto, the default)
  -> ratios against (a), and the peak resident memory (this process and its workers)

    python bench/features.py [--images 512] [--data ../shared/facebench]   # face crops made first if needed

The images are facebench face crops (`preprocess crop` into a temporary catalog), the default config.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import facebench_catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sqlalchemy import select

    from maskkit.catalog.models import DataRoot, Derived
    from maskkit.faces.crop import CropParams
    from maskkit.faces.preprocess import Preprocessor, ensure_variant
    from maskkit.train import features as F
    from maskkit.train.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog, targets = facebench_catalog(tmp)
        variant = ensure_variant(catalog, "crop", CropParams())
        Preprocessor(catalog, variant).run(targets[: args.images])
        with catalog.session() as s:
            root = Path(s.get(DataRoot, variant.root_id).path)
            paths = [str(root / p) for (p,) in s.execute(select(Derived.path).where(
                Derived.variant_id == variant.id, Derived.path.is_not(None)))][: args.images]
        cfg = load_config(None, [])
        extractor = F.FeatureExtractor(cfg["model"] | {"prior": "face"}, cfg["data"]["image_size"], 0.3,
                                       torch.device("cpu"))
        extractor.extract(paths[:8])  # models loaded before the clocks start
        os.environ["MASKKIT_FEATURE_RUNTIME"] = "torch"
        start = time.perf_counter()
        extractor.extract(paths)
        t_a = time.perf_counter() - start
        start = time.perf_counter()
        F.FeatureCache(tmp / "cache-b", extractor).features(paths)
        t_b = time.perf_counter() - start
        os.environ["MASKKIT_FEATURE_RUNTIME"] = "auto"
        start = time.perf_counter()
        F.FeatureCache(tmp / "cache-c", extractor).features(paths)
        t_c = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        catalog.dispose()
    n = len(paths)
    print(f"feature pass (efficientnet_lite0 + face prior, {cfg['data']['image_size']} px), {n} face crops, "
          f"{os.cpu_count()} cores")
    print(f"{'':<46}{'seconds':>9}{'images/s':>10}{'ratio':>8}")
    print(f"{'(a) one process: CNN, then prior, per batch':<46}{t_a:>9.1f}{n / t_a:>10.1f}{1:>8.2f}")
    print(f"{'(b) prior in workers, sharded cache (PyTorch)':<46}{t_b:>9.1f}{n / t_b:>10.1f}{t_a / t_b:>8.2f}")
    print(f"{'(c) maskkit: (b) + ONNX Runtime backbone':<46}{t_c:>9.1f}{n / t_c:>10.1f}{t_a / t_c:>8.2f}")
    print(f"peak memory: {peak:.0f} MB this process, {workers:.0f} MB the largest worker")


if __name__ == "__main__":
    main()
