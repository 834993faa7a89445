"""Preprocessing speed and agreement on facebench, in one run.

Face crop:
  (a) baseline: facenet-pytorch MTCNN called per image at full resolution (the starting team's way):
      open, detect, take the largest face, crop with the same margin, save
  (b) maskkit: `Preprocessor` with the crop variant (batched, trimmed pyramid, decode/write threads)
  -> throughput ratio b/a (goal >= 4) and box agreement: IoU of b's box vs a's, on images where (a)
     found a face (goal: IoU >= 0.9 on >= 98% of them)
Background removal (u2netp, on the first --rembg-images images):
  (a) naive loop: rembg.remove per image, a new session each call
  (b) maskkit: the rembg variant, one session reused
  -> throughput ratio (goal: no slower)

    python bench/preprocess.py [--limit N] [--rembg-images 24] [--busy N]

--busy N runs N busy-looping processes beside both crop measurements (a shared machine: another job on
the CPU); maskkit then sizes its threads to the free cores (maskkit/cpus.py) and should still beat (a).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, facebench_catalog  # noqa: E402


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def baseline_crops(paths: list[Path], out_dir: Path, params) -> tuple[float, dict]:
    from facenet_pytorch import MTCNN
    from PIL import Image

    from maskkit.faces.crop import crop_region, fallback_region

    mtcnn = MTCNN(keep_all=True, device="cpu")
    boxes = {}
    start = time.perf_counter()
    for n, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        found, _probs = mtcnn.detect(img)
        if found is not None and len(found):
            box = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            boxes[path] = [float(v) for v in box]
            region = crop_region(box, img.width, img.height, params)
        else:
            region = fallback_region(img.width, img.height, params)
        img.crop(tuple(int(round(v)) for v in region)).resize((params.width, params.height)).save(out_dir / f"{n}.jpg")
    return time.perf_counter() - start, boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="only the first N train images")
    parser.add_argument("--rembg-images", type=int, default=24)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside the crop runs")
    args = parser.parse_args()
    os.environ.setdefault("U2NET_HOME", str(ROOT / ".cache" / "u2net"))
    from sqlalchemy import select

    from maskkit.catalog.models import Derived
    from maskkit.faces.crop import CropParams
    from maskkit.faces.preprocess import Preprocessor, ensure_variant

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog, targets = facebench_catalog(tmp)
        targets = targets[: args.limit] if args.limit else targets
        params = CropParams()
        paths = [t.source for t in targets]
        (tmp / "baseline").mkdir()
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            t_a, base_boxes = baseline_crops(paths, tmp / "baseline", params)
            variant = ensure_variant(catalog, "crop", params)
            pre = Preprocessor(catalog, variant)
            rep = pre.run(targets)
            t_b = rep.seconds
        finally:
            for p in load:
                p.kill()
        with catalog.session() as s:
            ours = {row[0]: row[1] for row in s.execute(
                select(Derived.image_id, Derived.box).where(Derived.variant_id == variant.id))}
        by_path = {t.source: ours.get(t.image_id) for t in targets}
        scores = [iou(box, by_path[p]) if by_path[p] else 0.0 for p, box in base_boxes.items()]
        agree = sum(s >= 0.9 for s in scores) / len(scores) if scores else 0.0

        print(f"face crop on facebench train: {len(paths):,} images, {os.cpu_count()} cores, "
              f"{args.busy} busy process(es) beside; maskkit used {rep.threads} compute thread(s)")
        print(f"{'':<44}{'seconds':>9}{'images/s':>10}{'ratio':>8}")
        print(f"{'(a) facenet MTCNN per image, full res':<44}{t_a:>9.1f}{len(paths) / t_a:>10.1f}{1:>8.2f}")
        print(f"{'(b) maskkit preprocess crop':<44}{t_b:>9.1f}{len(paths) / t_b:>10.1f}{t_a / t_b:>8.2f}"
              f"   goal >= 4: {'ok' if t_a / t_b >= 4 else 'MISSED'}")
        print(f"faces found: (a) {len(base_boxes):,} ({len(base_boxes) / len(paths):.1%}), (b) {rep.ok:,} "
              f"({rep.ok / len(paths):.1%})")
        print(f"box agreement where (a) found a face: IoU >= 0.9 on {agree:.1%} "
              f"(mean IoU {sum(scores) / max(1, len(scores)):.3f})   goal >= 98%: {'ok' if agree >= 0.98 else 'MISSED'}")

        # background removal
        from PIL import Image
        from rembg import new_session, remove

        from maskkit.faces.background import RembgParams

        subset = targets[: args.rembg_images]
        start = time.perf_counter()
        for n, t in enumerate(subset):
            out = remove(Image.open(t.source), session=new_session("u2netp"))
            out.convert("RGB").save(tmp / "baseline" / f"r{n}.jpg")
        t_ra = time.perf_counter() - start
        rvariant = ensure_variant(catalog, "rembg", rembg=RembgParams(model="u2netp"))
        rrep = Preprocessor(catalog, rvariant).run(subset)
        t_rb = rrep.seconds
        print(f"\nbackground removal (u2netp), {len(subset)} images")
        print(f"{'(a) rembg.remove per image, new session':<44}{t_ra:>9.1f}{len(subset) / t_ra:>10.1f}{1:>8.2f}")
        print(f"{'(b) maskkit preprocess rembg, one session':<44}{t_rb:>9.1f}{len(subset) / t_rb:>10.1f}"
              f"{t_ra / t_rb:>8.2f}   goal >= 1: {'ok' if t_ra / t_rb >= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
