"""Review page speed: time from a key press to the next person's 7 images fully drawn, in headless
Chromium on facebench (goal: median under 150 ms).

One run measures two ways on the same catalog and server:
  baseline  the page with prefetching off (?prefetch=0): the key press fetches the person and 7 images
  maskkit   the page as shipped: next people and their images prefetched while the reviewer looks

The page records each key-press-to-drawn time itself (performance.now() at keydown, then every
<img>.decode() resolved and one animation frame). A reviewer pause between key presses is simulated.

    python bench/review.py [--people 40] [--pause-ms 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import facebench  # noqa: E402


def measure(page, url: str, key: str, people: int, pause_ms: int) -> list[float]:
    page.goto(url)
    page.wait_for_function("() => window.__ready === true")
    page.wait_for_timeout(pause_ms)
    for n in range(people):
        page.keyboard.press(key)
        page.wait_for_function(f"() => window.__renders.length >= {n + 1}")
        page.wait_for_timeout(pause_ms)
    return [r["ms"] for r in page.evaluate("window.__renders")]


def summary(name: str, times: list[float]) -> str:
    times = sorted(times)
    p90 = times[int(0.9 * (len(times) - 1))]
    return f"{name:<10}{statistics.median(times):>10.1f}{p90:>10.1f}{max(times):>10.1f}{len(times):>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=40, help="key presses per mode")
    parser.add_argument("--pause-ms", type=int, default=400, help="reviewer pause between key presses")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("no chromium found: apt-get install chromium (or --chromium PATH)")
    from playwright.sync_api import sync_playwright

    from maskkit.catalog import open_catalog
    from maskkit.catalog.ingest import ingest_train
    from maskkit.review.queue import build_queue
    from maskkit.review.server import AuditApp, make_server

    data = facebench()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MASKKIT_CACHE"] = str(Path(tmp) / "cache")  # start with no cached review images
        catalog = open_catalog(Path(tmp) / "review.db")
        ingest_train(catalog, data / "train")
        queue = build_queue(catalog)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            for mode, query, reviewer in (("baseline", "?prefetch=0&reviewer=bench-base", "bench-base"),
                                          ("maskkit", "?reviewer=bench", "bench")):
                review = AuditApp(catalog, queue, reviewer)
                server = make_server(review, port=0)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                page = browser.new_page(viewport={"width": 1600, "height": 900})
                url = review.url(query=query)
                results[mode] = measure(page, url, "a", args.people, args.pause_ms)
                page.close()
                server.shutdown()
                server.server_close()
            browser.close()
    print(f"facebench, {args.people} people per mode, {args.pause_ms} ms reviewer pause, {os.cpu_count()} cores")
    print(f"{'mode':<10}{'median ms':>10}{'p90 ms':>10}{'max ms':>10}{'n':>6}")
    print(summary("baseline", results["baseline"]))
    print(summary("maskkit", results["maskkit"]))
    base, ours = statistics.median(results["baseline"]), statistics.median(results["maskkit"])
    print(f"maskkit / baseline median: {ours / base:.2f}x   goal: median < 150 ms -> {'ok' if ours < 150 else 'MISSED'}")


if __name__ == "__main__":
    main()
