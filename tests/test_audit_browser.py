"""The review page in real headless Chromium (Debian's `chromium`, driven by Playwright)."""

import shutil
import sqlite3
import threading

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


@pytest.fixture
def audit_server(cli, dataset_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path / "cache"))
    cli("ingest", dataset_copy["train"])
    from maskkit.catalog import open_catalog
    from maskkit.review.queue import build_queue
    from maskkit.review.server import AuditApp, make_server

    catalog = open_catalog(cli.catalog)
    review = AuditApp(catalog, build_queue(catalog), "ann")
    server = make_server(review, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield review.url(), cli.catalog
    server.shutdown()
    server.server_close()


def test_keys_write_the_catalog(audit_server):
    url, catalog = audit_server
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => window.__ready === true")  # the page's own script runs under its CSP nonce
        assert "token=" not in page.url  # the token left the address bar; the cookie carries reloads
        first = page.evaluate("window.__state.person")
        assert len(page.query_selector_all(".tile img")) == 7
        assert page.inner_text("#gender") == first["gender"]

        def settle():
            page.wait_for_function("() => window.__state.pending === 0")

        page.keyboard.press("a")  # accept -> next person
        page.wait_for_function(f"() => window.__state.person && window.__state.person.profile_id !== {first['profile_id']}")
        page.wait_for_function("() => window.__ready === true")
        settle()
        second = page.evaluate("window.__state.person")
        page.keyboard.press("g")  # gender wrong: flip
        settle()
        page.wait_for_function(f"() => document.getElementById('gender').textContent !== '{second['gender']}'")
        page.keyboard.press("s")  # swap incorrect_mask / normal
        settle()
        page.keyboard.press("6")  # select incorrect_mask (6th image) ...
        page.keyboard.press("w")  # ... and call it a correctly worn mask
        settle()
        page.keyboard.press("b")  # back to the first person
        page.wait_for_function(f"() => window.__state.person.profile_id === {first['profile_id']}")
        assert page.inner_text("#mine") == "you: accept"
        browser.close()

    con = sqlite3.connect(catalog)
    reviews = con.execute("select profile_id, reviewer, verdict, event_id is not null from review order by id").fetchall()
    assert reviews[0] == (first["profile_id"], "ann", "accept", 0)
    assert [r[2] for r in reviews[1:]] == ["fix", "fix", "fix"] and all(r[3] for r in reviews[1:])
    assert all(r[0] == second["profile_id"] and r[1] == "ann" for r in reviews[1:])
    flipped = "male" if second["gender"] == "female" else "female"
    assert con.execute("select gender from profile where id=?", (second["profile_id"],)).fetchone() == (flipped,)
    masks = dict(con.execute("select kind, mask from image where profile_id=?", (second["profile_id"],)).fetchall())
    assert masks["normal"] == 1  # swapped: normal now shows an incorrectly worn mask
    assert masks["incorrect_mask"] == 0  # swapped to 2, then fixed to wear
    events = con.execute("select field, old_value, new_value, actor, source from label_event order by id").fetchall()
    assert events == [
        ("gender", second["gender"], flipped, "ann", "audit"),
        ("mask", "1", "2", "ann", "audit"),
        ("mask", "2", "1", "ann", "audit"),
        ("mask", "2", "0", "ann", "audit"),
    ]


def test_the_suspects_page_shows_the_evidence_marks_the_files_and_switches_lists(cli, dataset_copy, tmp_path,
                                                                                 monkeypatch):
    """A suspects queue with its field lists: the header says the evidence, the files it names are marked, and the
    list switch shows the gender reviewer's own order; a verdict there counts in that list's progress."""
    from maskkit.catalog import open_catalog
    from maskkit.review.queue import Queue, build_queue
    from maskkit.review.server import AuditApp, make_server

    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path / "cache"))
    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    ids = build_queue(catalog).profile_ids[:4]
    mask_hint = {"source": "model + face prior", "says": "female, young (about 24)", "field": "mask",
                 "label_probability": 0.0, "evidence": "incorrect_mask and normal look swapped: incorrect_mask, normal",
                 "images": "incorrect_mask, normal"}
    gender_hint = {"source": "model + face prior", "says": "male, middle (about 41)", "field": "gender",
                   "label_probability": 0.01, "evidence": "labelled female; model: male 0.97, prior: male 0.99"}
    every = Queue(ids, None, "suspects", {ids[0]: mask_hint, ids[1]: gender_hint})
    gender = Queue([ids[1], ids[2]], None, "suspects", {ids[1]: gender_hint})
    review = AuditApp(catalog, every, "ann", views={"all": every, "gender": gender})
    server = make_server(review, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(review.url())
            page.wait_for_function("() => window.__ready === true")
            assert page.evaluate("window.__state.person.profile_id") == ids[0]
            assert "look swapped: incorrect_mask, normal (label probability < 0.001)" in page.inner_text("#hint")
            marked = [t.get_attribute("data-kind") for t in page.query_selector_all(".tile.suspect")]
            assert sorted(marked) == ["incorrect_mask", "normal"]
            assert page.is_visible("#view")
            assert page.eval_on_selector_all("#view option", "os => os.map(o => o.value)") == ["all", "gender"]
            page.select_option("#view", "gender")
            page.wait_for_function(f"() => window.__state.view === 'gender' && window.__state.person "
                                   f"&& window.__state.person.profile_id === {ids[1]}")
            page.wait_for_function("() => window.__ready === true")
            assert "labelled female; model: male 0.97, prior: male 0.99 (label probability 0.01)" in page.inner_text(
                "#hint")
            assert page.query_selector_all(".tile.suspect") == []  # a gender suspect: no file to point at
            page.keyboard.press("a")  # accept -> the gender list's next person, its progress
            page.wait_for_function(f"() => window.__state.person.profile_id === {ids[2]}")
            page.wait_for_function("() => window.__state.pending === 0")
            assert "reviewed 1/2" in page.inner_text("#progress")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        catalog.dispose()
    con = sqlite3.connect(cli.catalog)
    assert con.execute("select profile_id, verdict from review").fetchall() == [(ids[1], "accept")]
