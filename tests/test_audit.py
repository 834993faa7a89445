import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from maskkit.catalog import open_catalog
from maskkit.errors import InvalidInput
from maskkit.review.actions import act, person_view
from maskkit.review.queue import build_queue, progress, resume_index


@pytest.fixture
def catalog(cli, dataset_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path / "cache"))
    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    catalog.db = cli.db
    catalog.path_or_url = cli.catalog
    yield catalog
    catalog.dispose()


def test_queue_order_range_progress_and_resume(catalog):
    q = build_queue(catalog)
    with catalog.session() as s:
        from sqlalchemy import select
        from maskkit.catalog.models import Profile

        ids = [p for p, in s.execute(select(Profile.person_id).order_by(Profile.person_id, Profile.folder))]
    k = next(i for i in range(5, len(ids)) if ids[i - 1] != ids[i])
    ranged = build_queue(catalog, start=ids[k], count=3)
    assert len(ranged) == 3
    views = [person_view(catalog, pid) for pid in ranged.profile_ids]
    assert [v["person_id"] for v in views] == ids[k:k + 3]
    assert len(views[0]["images"]) == 7 and views[0]["images"][0]["kind"] == "mask1"
    assert resume_index(catalog, ranged, "ann") == 0
    act(catalog, ranged.profile_ids[0], "ann", "accept")
    act(catalog, ranged.profile_ids[1], "ann", "skip")
    act(catalog, ranged.profile_ids[0], "bob", "gender", value="flip")
    assert resume_index(catalog, ranged, "ann") == 2
    assert resume_index(catalog, ranged, "bob") == 1
    assert progress(catalog, ranged) == {"total": 3, "reviewed": 1, "reviewers": {"ann": 1, "bob": 1}}
    unreviewed = build_queue(catalog, order="unreviewed")
    assert len(unreviewed) == len(q) - 1 and ranged.profile_ids[0] not in unreviewed.profile_ids


@pytest.mark.parametrize("kwargs, message", [
    (dict(start="999999"), "no people to review from id 999999"),
    (dict(order="random"), "unknown queue 'random'"),
    (dict(count=0), "--count must be at least 1"),
    (dict(order="suspects"), "out-of-fold probabilities"),
])
def test_queue_bad_input(catalog, kwargs, message):
    from maskkit.errors import MaskkitError

    with pytest.raises(MaskkitError, match=message.replace("(", r"\(")):
        build_queue(catalog, **kwargs)


def test_audit_cli_bad_input_is_one_line(cli, catalog):
    result = cli("audit", "--start", "999999", "--no-web", ok=False)
    assert result.exit_code == 2 and "no people to review" in result.output and "Traceback" not in result.output


def test_actions_validate_and_write_event_and_review_together(catalog):
    from maskkit.errors import MaskkitError

    pid = build_queue(catalog).profile_ids[0]
    for action, kwargs, message in [
        ("age", dict(value="999"), "out of range"),
        ("mask", dict(kind="mask7", value="wear"), "unknown image kind"),
        ("dance", {}, "unknown action"),
        ("note", dict(note="  "), "needs text"),
    ]:
        with pytest.raises(MaskkitError, match=message):
            act(catalog, pid, "ann", action, **kwargs)
    con = catalog.db()
    assert con.execute("select count(*) from review").fetchone()[0] == 0
    result = act(catalog, pid, "ann", "age", value="61", note="grey hair")
    row = con.execute("select verdict, event_id, note from review").fetchone()
    assert row == ("fix", result["events"][0], "grey hair")
    assert con.execute("select field, new_value, actor, source from label_event").fetchone() == ("age", "61", "ann", "audit")


def test_server_api(catalog):
    from maskkit.review.server import AuditApp, make_server

    review = AuditApp(catalog, build_queue(catalog), "ann")
    server = make_server(review, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    token = {"X-Maskkit-Token": review.token}

    def get(path):
        return urllib.request.urlopen(urllib.request.Request(base + path, headers=token))

    try:
        state = json.load(get("/api/state?reviewer=cat"))
        assert state["reviewer"] == "cat" and state["index"] == 0 and len(state["queue"]) == 12
        pid = state["queue"][0]["profile_id"]
        view = json.load(get(f"/api/person/{pid}"))
        img = get(view["images"][0]["url"])
        assert img.headers["Content-Type"] == "image/jpeg" and img.read()[:2] == b"\xff\xd8"
        assert "immutable" in img.headers["Cache-Control"]
        html = urllib.request.urlopen(review.url()).read().decode()
        assert "maskkit audit" in html
        body = json.dumps({"profile_id": pid, "action": "age", "value": "abc"}).encode()
        req = urllib.request.Request(base + "/api/action", data=body, headers={"Content-Type": "application/json", **token})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 400 and "not a whole number" in json.load(err.value)["error"]
        body = json.dumps({"profile_id": pid, "action": "accept", "reviewer": "cat"}).encode()
        req = urllib.request.Request(base + "/api/action", data=body, headers={"Content-Type": "application/json", **token})
        answer = json.load(urllib.request.urlopen(req))
        assert answer["progress"]["reviewers"] == {"cat": 1} and answer["person"]["mine"] == ["accept"]
    finally:
        server.shutdown()
        server.server_close()


def test_terminal_flow(cli, catalog, tmp_path):
    q = build_queue(catalog)
    first = person_view(catalog, q.profile_ids[0])
    flipped = "male" if first["gender"] == "female" else "female"
    answers = "\n".join(["g", "mask 6 wear", "swap", "note looks fine", "a", "s", "b", "bad", "q"]) + "\n"
    result = cli("audit", "--no-web", "--reviewer", "tim", "--sheet-dir", tmp_path / "sheets", input=answers)
    assert "reviewed" in result.output
    sheet = tmp_path / "sheets" / f"{first['folder']}.png"
    assert sheet.read_bytes()[:4] == b"\x89PNG"
    con = cli.db()
    verdicts = con.execute("select profile_id, verdict from review where reviewer='tim' order by id").fetchall()
    second = q.profile_ids[1]
    assert [v for _, v in verdicts] == ["fix", "fix", "fix", "note", "accept", "skip", "bad"]
    assert verdicts[-1][0] == second and verdicts[-2][0] == second
    assert con.execute("select gender from profile where id=?", (first["profile_id"],)).fetchone()[0] == flipped
    masks = dict(con.execute("select kind, mask from image where profile_id=?", (first["profile_id"],)).fetchall())
    assert masks["incorrect_mask"] == 2 and masks["normal"] == 0  # set to wear, then swapped with normal
    # a second session resumes after the last person this reviewer moved past
    assert resume_index(catalog, q, "tim") == 2


WRITER = r"""
import sys
from maskkit.catalog import open_catalog
from maskkit.errors import InvalidInput
from maskkit.review.actions import act
from maskkit.review.queue import build_queue
catalog = open_catalog(sys.argv[1])
ids = build_queue(catalog).profile_ids
who = sys.argv[2]
for i in range(200):
    pid = ids[i % len(ids)]
    if i % 4 == 0:
        act(catalog, pid, who, "age", value=str(20 + (i % 50)))
    elif i % 4 == 1:
        act(catalog, pid, who, "gender", value="flip")
    else:
        act(catalog, pid, who, "accept")
"""


def test_two_reviewer_processes_lose_no_writes(catalog):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, catalog.path_or_url, name]) for name in ("ann", "bob")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    con = catalog.db()
    assert con.execute("select reviewer, count(*) from review group by reviewer order by reviewer").fetchall() == \
        [("ann", 200), ("bob", 200)]
    # every fix is in the history, and the current labels are the replayed history (later write wins)
    fixes = con.execute("select count(*) from review where verdict='fix'").fetchone()[0]
    events = con.execute("select count(*) from label_event").fetchone()[0]
    assert fixes == 200 and events <= fixes
    from maskkit.catalog.relabel import replay_labels

    with catalog.session() as session:
        people, _ = replay_labels(session)
    current = {i: {"gender": g, "age": a, "race": r} for i, g, a, r in con.execute("select id, gender, age, race from profile")}
    assert people == current
    # the old value of each event is the new value of the event before it on the same field
    rows = con.execute("select profile_id, field, old_value, new_value from label_event order by id").fetchall()
    last = {}
    for pid, field, old, new in rows:
        if (pid, field) in last:
            assert old == last[(pid, field)]
        last[(pid, field)] = new


def test_assign_shares_work_stably(cli, catalog):
    out = cli("audit", "--assign", "alice,bob,carol").output
    assert "alice +4" in out and "bob +4" in out and "carol +4" in out
    rows = dict(catalog.db().execute("select profile_id, reviewer from assignment").fetchall())
    assert len(rows) == 12
    # re-running changes nothing
    assert "alice +0, bob +0, carol +0" in cli("audit", "--assign", "alice,bob,carol").output
    assert dict(catalog.db().execute("select profile_id, reviewer from assignment").fetchall()) == rows
    # alice reviews two of hers; carol leaves: her unreviewed people go to alice and bob, balanced
    alice = [pid for pid, who in rows.items() if who == "alice"]
    act(catalog, alice[0], "alice", "accept")
    act(catalog, alice[1], "alice", "age", value="33")
    cli("audit", "--assign", "alice,bob")
    now = dict(catalog.db().execute("select profile_id, reviewer from assignment").fetchall())
    assert set(now.values()) == {"alice", "bob"} and all(now[p] == w for p, w in rows.items() if w != "carol")
    status = cli("audit", "--status").output
    assert "alice" in status and "fixes made" in status
    from maskkit.review.assign import status as status_rows

    by_name = {r["reviewer"]: r for r in status_rows(catalog)}
    assert by_name["alice"]["reviewed"] == 2 and by_name["alice"]["fixes"] == 1
    assert by_name["alice"]["left"] + by_name["bob"]["left"] == 10
    assert abs(by_name["alice"]["left"] - by_name["bob"]["left"]) <= 1
    # the review page shows a reviewer's own share only
    result = cli("audit", "--no-web", "--reviewer", "zed", ok=False)
    assert result.exit_code == 3 and "no people are assigned to 'zed'" in result.output
    out = cli("audit", "--no-web", "--reviewer", "bob", input="q\n").output
    first_shown = out.split("1/")[1].split(" ")[0]
    assert first_shown == str(by_name["bob"]["assigned"])


@pytest.fixture
def pages(monkeypatch):
    """The review pages `maskkit audit` makes (their AuditApp), each server stopped at once as by Ctrl-C."""
    import maskkit.review.server as server_module

    made = []

    class Stopped:
        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr(server_module, "make_server", lambda app, *a, **k: made.append(app) or Stopped())
    return made


def test_an_assigned_share_of_the_suspects_queue_keeps_its_hints(cli, catalog, pages):
    """`audit --queue suspects` for a reviewer with an assigned share: the page's queue is the share, in the
    ranking's order, each person with the hint that ranked them (the share used to drop them)."""
    from maskkit.evaluate.suspects import suspects

    cli("audit", "--assign", "alice,bob")
    out = cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "bob").output
    assert "stopped; everything was saved" in out
    assert f"lists on the page: all ({len(pages[0].views['all'])}), gender (" in out and "this one: all" in out
    queue = pages[0].queue
    mine = {pid for pid, who in catalog.db().execute("select profile_id, reviewer from assignment") if who == "bob"}
    ranked = [r["profile_id"] for r in suspects(catalog, "prior")]
    assert queue.profile_ids == [pid for pid in ranked if pid in mine] and len(queue) == len(mine)
    assert set(queue.hints) == set(queue.profile_ids) and all(queue.hints[p]["source"] == "face prior" for p in mine)
    shown = pages[0].state("bob")["queue"]
    assert all(row["hint"] and row["hint"]["evidence"] for row in shown)
    # the page switches to each field's own list: bob's share again, in that field's order, with its evidence
    assert pages[0].state("bob")["views"] == ["all", "gender", "age"]  # no mask list before training
    for field in ("gender", "age"):
        ordered = [r["profile_id"] for r in suspects(catalog, "prior", field=field) if r["profile_id"] in mine]
        view = pages[0].state("bob", field)
        assert view["view"] == field and [row["profile_id"] for row in view["queue"]] == ordered
        assert all(row["hint"]["field"] == field and row["hint"]["evidence"].startswith("labelled ")
                   for row in view["queue"])
    with pytest.raises(InvalidInput, match="unknown view 'hair'"):
        pages[0].state("bob", "hair")
    # --field opens the page on that list; outside the suspects queue it is one clear line
    cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "bob", "--field", "age")
    assert pages[-1].view == "age" and pages[-1].queue.profile_ids == pages[0].views["age"].profile_ids
    refused = cli("audit", "--field", "age", "--reviewer", "bob", ok=False)
    assert refused.exit_code == 2 and "--field goes with --queue suspects" in refused.output
    # the terminal flow says the same beside each suspect
    first = catalog.db().execute("select person_id from profile where id = ?", (queue.profile_ids[0],)).fetchone()[0]
    out = cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "bob", "--no-web", input="q\n").output
    assert f"1/{len(queue)} {first}" in out and f"suspect: {queue.hints[queue.profile_ids[0]]['source']} says" in out
    assert queue.hints[queue.profile_ids[0]]["evidence"] in out.replace("\n  ", " ")


def _raw(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    """Send raw bytes, read the answer (a hang fails by the socket's timeout)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length] or b"{}")


def _post(port: int, body: bytes, length: str | None = None, token: str = "", extra: str = "",
          host: str | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    header = f"Content-Length: {len(body) if length is None else length}\r\n" if length != "none" else ""
    head = (f"POST /api/action HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nContent-Type: {content_type}\r\n"
            f"X-Maskkit-Token: {token}\r\n{extra}{header}\r\n")
    return _raw(port, head.encode() + body)


def _get(port: int, path: str, token: str = "", extra: str = "", host: str | None = None) -> tuple[int, dict]:
    return _raw(port, (f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
                       + (f"X-Maskkit-Token: {token}\r\n" if token else "") + extra + "\r\n").encode())


@pytest.mark.parametrize("body, length, status, words", [
    (b"[1, 2]", None, 400, "JSON object"),
    (b"null", None, 400, "JSON object"),
    (b'"accept"', None, 400, "JSON object"),
    (b"{not json", None, 400, "not JSON"),
    (b"\xff\xfe", None, 400, "not JSON"),
    (b'{"profile_id": 1.7, "action": "accept"}', None, 400, "profile_id"),
    (b'{"profile_id": true, "action": "accept"}', None, 400, "profile_id"),
    (b'{"profile_id": -3, "action": "accept"}', None, 400, "profile_id"),
    (b'{"action": "accept"}', None, 400, "profile_id"),
    (b'{"profile_id": PID, "action": "dance"}', None, 400, "action must be one of"),
    (b'{"profile_id": PID, "action": "accept", "reviewer": {"a": 1}}', None, 400, "reviewer must be str"),
    (b'{"profile_id": PID, "action": "note", "note": ["x"]}', None, 400, "note must be str"),
    (b'{"profile_id": 999999, "action": "accept"}', None, 403, "not in this review queue"),
    (b"{}", "-1", 411, "Content-Length"),
    (b"{}", "abc", 411, "Content-Length"),
    (b"{}", "none", 411, "Content-Length"),
    (b"{}", "99999999", 413, "over"),
])
def test_every_malformed_request_gets_a_4xx_json_answer_at_once(catalog, body, length, status, words):
    from maskkit.review.server import AuditApp, make_server

    queue = build_queue(catalog, count=3)
    review = AuditApp(catalog, queue, "ann")
    server = make_server(review, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        code, answer = _post(port, body.replace(b"PID", str(queue.profile_ids[0]).encode()), length, review.token)
        assert code == status and words in answer["error"]
        # the server still answers well-formed requests, and no review was recorded by the bad one
        good = json.dumps({"profile_id": queue.profile_ids[0], "action": "skip"}).encode()
        assert _post(port, good, token=review.token)[0] == 200
        assert catalog.db().execute("select count(*) from review").fetchone()[0] == 1
        # another queue's person and absolute paths stay out of reach
        outside = [p for p in build_queue(catalog).profile_ids if p not in queue.profile_ids][0]
        assert _get(port, f"/api/person/{outside}", review.token)[0] == 403
        code, view = _get(port, f"/api/person/{queue.profile_ids[0]}", review.token)
        assert code == 200 and "root" not in view and all("path" not in im for im in view["images"])
    finally:
        server.shutdown()
        server.server_close()


from hypothesis import given, settings, strategies as st  # noqa: E402

_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64),
                 st.dictionaries(st.sampled_from(["profile_id", "action", "reviewer", "value", "kind", "note", "x"]),
                                 _json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
                 _json_values.map(lambda v: json.dumps(v).encode())))
def test_request_bodies_parse_or_fail_as_invalid_input(body):
    from maskkit.errors import InvalidInput
    from maskkit.review.actions import ACTIONS, parse_action_request

    try:
        req = parse_action_request(body)
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(req.profile_id, int) and not isinstance(req.profile_id, bool) and req.profile_id >= 1
    assert req.action in ACTIONS
    for v in (req.reviewer, req.kind, req.note):
        assert v is None or isinstance(v, str)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=60), st.sampled_from(["all", "gender", "age", "mask", "id", ""])))
def test_a_view_name_from_a_request_names_a_list_or_fails_in_one_line(view):
    """/api/state?view=... and /api/action?view=... take any text: a list of this server's, or one clear line."""
    from maskkit.errors import InvalidInput
    from maskkit.review.queue import Queue
    from maskkit.review.server import AuditApp

    every, gender = Queue([1, 2, 3], None, "suspects"), Queue([3, 1], None, "suspects")
    app = AuditApp(None, every, "ann", views={"all": every, "gender": gender})
    assert app.allowed == {1, 2, 3} and app.view == "all"
    try:
        queue = app.queue_of(view)
    except InvalidInput as exc:
        assert view not in (None, "", "all", "gender") and "\n" not in str(exc) and "views: all, gender" in str(exc)
        return
    assert queue is {"gender": gender}.get(view, every)


def _person(catalog, pid: int, column: str = "person_id") -> str:
    return catalog.db().execute(f"select {column} from profile where id = ?", (pid,)).fetchone()[0]


def test_people_a_reviewer_settled_leave_the_suspects_until_their_labels_change(cli, catalog, pages):
    """A second ranking (after retraining, or the next day) goes on to people nobody has looked at: an accept, a
    fix or `bad` takes a person out of `relabel --suspects` and `audit --queue suspects` (every list), a skip does
    not, and a later change to their labels (a relabel, an undo) brings them back; --include-reviewed lists all."""
    from maskkit.evaluate.suspects import suspects
    from maskkit.review.queue import settled_people

    everyone = [r["profile_id"] for r in suspects(catalog, "prior")]
    a, b, c = everyone[:3]
    act(catalog, a, "ann", "accept")
    act(catalog, b, "ann", "skip")
    act(catalog, c, "bob", "gender", value="flip")  # a fix: its own change comes just before its verdict
    assert settled_people(catalog) == {a, c}
    full = suspects(catalog, "prior")
    left = suspects(catalog, "prior", leave_out=settled_people(catalog))
    assert {r["profile_id"] for r in full} == set(everyone)
    assert [r["profile_id"] for r in left] == [r["profile_id"] for r in full if r["profile_id"] not in (a, c)]
    assert [r["score"] for r in left] == [r["score"] for r in full if r["profile_id"] not in (a, c)]  # weighed alike
    assert suspects(catalog, "prior", top=3, leave_out={a, c}) == left[:3]  # --top counts the people left

    # the terminal says who is left out and how to list them
    out = cli("relabel", "--suspects", "prior", "--top", "50").output
    assert "not listed: 2 people a reviewer settled since their labels last changed" in out
    listed = {line.split("│")[2].strip() for line in out.splitlines() if line.count("│") > 3}
    assert _person(catalog, a) not in listed and _person(catalog, b) in listed
    out = cli("relabel", "--suspects", "prior", "--top", "50", "--include-reviewed").output
    assert "not listed" not in out and _person(catalog, a) in out
    refused = cli("relabel", "--include-reviewed", ok=False)
    assert refused.exit_code == 2 and "--include-reviewed goes with --suspects" in refused.output

    # the review page's lists leave them out too
    out = cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "ann").output
    assert "not listed: 2 people" in out
    assert set(pages[-1].views) == {"all", "gender", "age"}
    for view in pages[-1].views.values():  # each field's own list too
        assert {a, c}.isdisjoint(view.profile_ids) and b in view.profile_ids
    cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "ann", "--include-reviewed")
    assert {a, b, c} <= set(pages[-1].views["all"].profile_ids)

    # a change to the labels after the verdict: the verdict was on other labels, so they are suspects again
    new_age = "71" if _person(catalog, a, "age") != 71 else "72"
    cli("relabel", _person(catalog, a, "folder"), "--age", new_age, "--reason", "a second look")
    flip = catalog.db().execute("select max(id) from label_event where profile_id = ?", (c,)).fetchone()[0]
    cli("relabel", "--undo", str(flip))
    assert settled_people(catalog) == set()
    assert {r["profile_id"] for r in suspects(catalog, "prior", leave_out=settled_people(catalog))} == set(everyone)

    # everyone settled: one clear line, not an empty page
    for pid in everyone:
        act(catalog, pid, "ann", "bad" if pid == b else "accept")
    assert settled_people(catalog) == set(everyone)
    gone = cli("audit", "--queue", "suspects", "--run", "prior", "--reviewer", "ann", ok=False)
    assert gone.exit_code != 0 and "no suspects left" in gone.output and "Traceback" not in gone.output
    refused = cli("audit", "--include-reviewed", "--reviewer", "ann", ok=False)
    assert refused.exit_code == 2 and "--include-reviewed goes with --queue suspects" in refused.output


_OPS = st.lists(st.tuples(st.sampled_from(["accept", "bad", "fix", "skip", "note", "relabel", "undo"]),
                          st.integers(0, 3)), max_size=8)


def test_settled_people_follow_every_verdict_and_label_change(catalog):
    """Any sequence of verdicts and label changes: a person is settled after accept / bad / a fix, stays as they
    were after skip / note, and is unsettled by a relabel or an undo made after the verdict."""
    from hypothesis import HealthCheck
    from maskkit.catalog.relabel import relabel, undo
    from maskkit.review.queue import settled_people

    people = [pid for pid, in catalog.db().execute("select id from profile order by id limit 4")]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_OPS)
    def run(ops):
        expected = settled_people(catalog)
        for op, k in ops:
            pid = people[k]
            if op in ("accept", "bad", "skip"):
                act(catalog, pid, "ann", op)
            elif op == "note":
                act(catalog, pid, "ann", "note", note="looked")
            elif op == "fix":
                act(catalog, pid, "bob", "gender", value="flip")
            elif op == "relabel":
                age = catalog.db().execute("select age from profile where id = ?", (pid,)).fetchone()[0]
                relabel(catalog, _person(catalog, pid, "folder"), "age", age + 1 if age < 80 else age - 1, actor="carol")
            else:
                open_events = [e for e, in catalog.db().execute(
                    "select id from label_event where profile_id = ? and undone_by_id is null and undoes_id is null",
                    (pid,))]
                if not open_events:
                    continue
                undo(catalog, max(open_events), actor="carol")
            if op in ("accept", "bad", "fix"):
                expected.add(pid)
            elif op in ("relabel", "undo"):
                expected.discard(pid)
            assert settled_people(catalog) == expected, (op, k)

    run()
