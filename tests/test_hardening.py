"""Round-2 hardening that is not one bad input in the table: the catalog vanishing under a running command,
the one name rule (property-based), named single runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from maskkit.errors import InvalidInput


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_a_name_that_passes_is_one_harmless_file_name(name):
    from maskkit.names import MAX_NAME, check_name

    try:
        check_name(name, "run name")
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 0 < len(name) <= MAX_NAME
    assert Path(name).name == name and name not in (".", "..") and ".." not in name and not name.startswith(".")
    assert (Path("/runs") / name).parent == Path("/runs") and "\x00" not in name


@pytest.mark.parametrize("name", ["x/../../../escape", "..", ".", "a\\b", "", "x" * 101, "a b", "é", "-rf", "~"])
def test_names_that_would_leave_their_folder_are_refused(name):
    from maskkit.names import check_name

    with pytest.raises(InvalidInput):
        check_name(name)


def test_old_names_still_make_one_file_name():
    from maskkit.names import safe_file_part

    assert "/" not in safe_file_part("x/../../escape") and ".." not in safe_file_part("x/../../escape")
    assert safe_file_part("..") not in ("", ".", "..")


def test_a_deleted_catalog_refuses_the_review_pages_next_key(cli, dataset_copy, tmp_path, monkeypatch):
    """The catalog file deleted while `audit` serves the page: the next key press is refused, not 'saved'
    into the deleted file."""
    import urllib.error
    import urllib.request

    from maskkit.catalog import open_catalog
    from maskkit.review.queue import build_queue
    from maskkit.review.server import AuditApp, make_server

    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path / "cache"))
    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    review = AuditApp(catalog, build_queue(catalog, count=2), "ann")
    server = make_server(review, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pid = review.queue.profile_ids[0]
    body = json.dumps({"profile_id": pid, "action": "accept"}).encode()

    def press():
        req = urllib.request.Request(f"http://127.0.0.1:{review.port}/api/action", data=body,
                                     headers={"Content-Type": "application/json", "X-Maskkit-Token": review.token})
        return urllib.request.urlopen(req)

    try:
        assert press().status == 200
        Path(cli.catalog).unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(cli.catalog) + suffix).unlink(missing_ok=True)
        with pytest.raises(urllib.error.HTTPError) as err:
            press()
        assert err.value.code == 400 and "was deleted while this command ran" in json.load(err.value)["error"]
    finally:
        server.shutdown()
        server.server_close()
        catalog.dispose()


def test_a_replaced_catalog_is_refused_too(cli, dataset_copy, tmp_path):
    import shutil

    from maskkit.catalog import open_catalog
    from maskkit.errors import Conflict

    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    with catalog.session():
        pass
    shutil.copy(cli.catalog, tmp_path / "copy.db")
    Path(cli.catalog).unlink()
    shutil.move(tmp_path / "copy.db", cli.catalog)
    with pytest.raises(Conflict, match="was replaced"):
        with catalog.session():
            pass
    catalog.dispose()


def test_ablate_remedy_lists(tmp_path):
    from maskkit.evaluate.ablation import REMEDIES, choose_remedies

    assert len(choose_remedies(None)) == len(REMEDIES)
    assert [r.name for r in choose_remedies(["none", "focal"])] == ["none", "focal"]
    for bad, words in (([], "names none"), (["none", "none"], "more than once"), (["focus"], "did you mean")):
        with pytest.raises(InvalidInput, match=words):
            choose_remedies(bad)


def test_metrics_say_how_many_classes_are_present():
    """A view without old people: macro F1 over 18 classes counts 6 absent ones as 0; the metrics say so and
    give the figure over the present classes (eval prints both)."""
    import numpy as np

    from maskkit import labels as L
    from maskkit.train.metrics import evaluate

    present = [c for c in range(18) if L.decode(c)[2] != 2]  # no old band
    y = np.repeat(present, 3)
    probs = np.full((len(y), 18), 0.01)
    probs[np.arange(len(y)), y] = 0.9  # all right
    m = evaluate(probs, y)
    assert m["classes_present"] == 12
    assert m["macro_f1"] == pytest.approx(12 / 18) and m["macro_f1_present"] == pytest.approx(1.0)
    from maskkit.cli.evaluate import _metrics_line

    assert "6 of the 18 classes have no images here" in _metrics_line(m)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_output_to_a_full_device_is_one_line(cli, dataset_copy):
    """`maskkit runs --json > /dev/full`: one error line and the file-system exit code, no traceback."""
    import os
    import subprocess
    import sys

    cli("ingest", dataset_copy["train"])
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", "from maskkit.cli import main; main()", "--catalog",
                               str(cli.catalog), "runs", "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


def test_threads_are_sized_to_the_free_cores(monkeypatch):
    """A busy core is seen as busy (so crop does not start more compute threads than cores are free);
    MASKKIT_THREADS overrides; torch's thread count is restored after the block."""
    import os

    import torch

    from maskkit import cpus
    from maskkit.errors import InvalidInput

    monkeypatch.delenv(cpus.ENV_VAR, raising=False)
    assert 0 <= cpus.busy_cores(0.1) <= (os.cpu_count() or 1) + 0.5  # the real reading, whatever the load
    # scripted /proc/stat readings: over the sample, one of two cores was busy with someone else's work
    readings = iter([(1000, 4000), (1100, 4200)])
    monkeypatch.setattr(cpus, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpus, "usable_cores", lambda: 2)
    assert cpus.busy_cores(0.01) == pytest.approx(1.0, abs=0.2)
    readings = iter([(1000, 4000), (1100, 4200)])
    assert cpus.free_cores() == 1
    readings = iter([(1000, 4000), (1000, 4200)])  # a quiet machine: every core
    assert cpus.free_cores() == 2
    monkeypatch.setenv(cpus.ENV_VAR, "3")
    assert cpus.free_cores() == 3
    monkeypatch.setenv(cpus.ENV_VAR, "many")
    with pytest.raises(InvalidInput, match="MASKKIT_THREADS must be a whole number"):
        cpus.free_cores()
    before = torch.get_num_threads()
    with cpus.compute_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
