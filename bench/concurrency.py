"""Writers during an ingest: a relabel and review key presses while facebench-large (2,700 people, 18,900
photos) is ingested into a new catalog by another process. Every write must succeed; prints the longest
wait, against the same writes on an idle catalog (the baseline, measured in the same run).

    python bench/concurrency.py            # builds ../shared/facebench-large into bench/out/ first if needed
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
from _common import facebench_large  # noqa: E402


def writes(catalog, people: list[tuple[int, str]], seconds: float, stop=None) -> list[float]:
    """A relabel and review key presses, one every 0.2 s; the duration of each."""
    from maskkit.catalog.relabel import relabel
    from maskkit.review.actions import act

    waits, n, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop and stop()):
        pid, person = people[n % len(people)]
        start = time.perf_counter()
        if n % 5 == 0:
            relabel(catalog, person, "age", 20 + n % 40, actor="bench", reason="concurrency bench")
        else:
            act(catalog, pid, "bench", ("accept", "skip", "bad", "note")[n % 4], note="bench" if n % 4 == 3 else None)
        waits.append(time.perf_counter() - start)
        n += 1
        time.sleep(0.2)
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a train folder (default: facebench-large)")
    args = parser.parse_args()
    data = args.data or facebench_large()
    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_train

    work = Path(tempfile.mkdtemp(prefix="maskkit-concurrency-"))
    db = work / "c.db"
    # a catalog with a few people already in it (the reviewers' people), from the first 30 folders
    small = work / "small"
    (small / "images").mkdir(parents=True)
    lines = (data / "train.csv").read_text().splitlines()
    (small / "train.csv").write_text("\n".join(lines[:31]) + "\n")
    for line in lines[1:31]:
        folder = line.split(",")[-1]
        os.symlink(data / "images" / folder, small / "images" / folder)
    catalog = open_catalog(db)
    ingest_train(catalog, small)
    with catalog.engine.connect() as conn:
        people = [(row[0], row[1]) for row in conn.exec_driver_sql("select id, folder from profile")]
    baseline = writes(catalog, people, 5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "maskkit", "--catalog", str(db), "ingest", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    during = writes(catalog, people, 600, stop=lambda: proc.poll() is not None)
    proc.wait()
    ingest_seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"ingest failed: {proc.stderr.read().decode()[-2000:]}")
    with catalog.engine.connect() as conn:
        reviews = conn.exec_driver_sql("select count(*) from review where reviewer = 'bench'").scalar()
        events = conn.exec_driver_sql("select count(*) from label_event where actor = 'bench'").scalar()
        images = conn.exec_driver_sql("select count(*) from image").scalar()
    print(f"ingest of {data} ({images:,} images in the catalog): {ingest_seconds:.1f} s")
    print(f"writes during the ingest: {len(during)} (all succeeded: {reviews + events} recorded in total), "
          f"longest wait {max(during) * 1000:.0f} ms, median {sorted(during)[len(during) // 2] * 1000:.0f} ms")
    print(f"baseline on an idle catalog: {len(baseline)} writes, longest {max(baseline) * 1000:.0f} ms, "
          f"median {sorted(baseline)[len(baseline) // 2] * 1000:.0f} ms; "
          f"ratio of longest waits {max(during) / max(baseline):.1f}x")
    catalog.dispose()


if __name__ == "__main__":
    main()
