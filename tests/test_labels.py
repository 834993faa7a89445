import itertools

import pytest

from maskkit import labels


def test_encode_decode_roundtrip_all_classes():
    seen = set()
    for mask, gender, band in itertools.product(range(3), range(2), range(3)):
        c = labels.encode(mask, gender, band)
        assert c == mask * 6 + gender * 3 + band
        assert labels.decode(c) == (mask, gender, band)
        seen.add(c)
    assert seen == set(range(18)) and labels.NUM_CLASSES == 18


@pytest.mark.parametrize("age", range(0, 121))
def test_age_band_rule_every_age(age):
    expected = 0 if age < 30 else 1 if age < 60 else 2
    assert labels.age_band(age) == expected


@pytest.mark.parametrize("bad", [-1, 121, 30.5, "30", None, True])
def test_age_band_rejects_bad_ages(bad):
    with pytest.raises((ValueError, TypeError)):
        labels.age_band(bad)


@pytest.mark.parametrize("args", [(3, 0, 0), (0, 2, 0), (0, 0, 3), (-1, 0, 0), (0.0, 0, 0), (True, 0, 0)])
def test_encode_rejects_out_of_range(args):
    with pytest.raises(ValueError):
        labels.encode(*args)


@pytest.mark.parametrize("bad", [-1, 18, 1.0, "3", None])
def test_decode_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        labels.decode(bad)


def test_kinds_and_mask_states():
    assert labels.IMAGE_KINDS == ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
    assert [labels.KIND_MASK[k] for k in labels.IMAGE_KINDS] == [0, 0, 0, 0, 0, 1, 2]
    assert [labels.mask_index(k) for k in labels.IMAGE_KINDS] == [0, 0, 0, 0, 0, 1, 2]
    assert [labels.mask_index(s) for s in labels.MASK_STATES] == [0, 1, 2]
    with pytest.raises(ValueError):
        labels.mask_index("mask6")


def test_gender_index_and_class_of():
    assert labels.gender_index("male") == 0 and labels.gender_index(" Female ") == 1
    with pytest.raises(ValueError):
        labels.gender_index("other")
    # the competition's own example classes
    assert labels.class_of("mask3", "male", 25) == 0
    assert labels.class_of("incorrect_mask", "female", 45) == 10
    assert labels.class_of("normal", "female", 60) == 17
    assert labels.class_of(2, 0, 59) == 13
    assert labels.class_name(17) == "not_wear/female/old"


def test_labels_module_is_the_only_owner_of_the_class_formula_and_band_edges():
    """No other module writes the class arithmetic (mask*6 + gender*3 + band, // 6, % 3, a 3x2x3 reshape) or
    the band edges (29/30, 59/60) itself: they call labels.py."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = {
        "class formula": re.compile(r"\*\s*6\s*\+|\b(y|c|t|cls|label|labels18|pred|classes|class_index)\s*(//\s*6|%\s*3)\b|//\s*3\)\s*%\s*2"
                                    r"|reshape\(\s*-1\s*,\s*3\s*,\s*2\s*,\s*3\s*\)"),
        "band edges": re.compile(r"(<=?|>=?)\s*(29|30|59|60)\b(?!\s*[,)]?\s*#\s*px)|\(\s*(18|30|60)\s*,\s*(29|59|80)\s*\)"),
    }
    found = []
    for path in sorted((root / "maskkit").rglob("*.py")) + sorted((root / "bench").glob("*.py")):
        if path.name == "labels.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if code.strip().startswith(('"', "'")):
                continue
            for what, pattern in patterns.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(root)}:{n}: {what}: {line.strip()}")
    assert found == [], "\n".join(found)


from hypothesis import given, strategies as st  # noqa: E402

from maskkit.train import schema  # noqa: E402


@given(st.sampled_from(schema.KEYS), st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6),
                                               st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                                               st.none()))
def test_any_config_value_is_parsed_or_refused_in_one_line(key, value):
    from maskkit.errors import InvalidInput

    try:
        parsed = schema.parse_value(key, value)
    except InvalidInput as exc:
        assert key.name in str(exc) and "\n" not in str(exc)
        return
    if parsed is None:
        assert key.optional
        return
    assert isinstance(parsed, key.type)
    if key.choices:
        assert parsed in key.choices
    if key.min is not None:
        assert parsed >= key.min
    if key.max is not None:
        assert parsed <= key.max
    assert schema.parse_value(key, parsed) == parsed  # a parsed value parses to itself


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(ages=st.lists(st.integers(0, 120), min_size=1, max_size=20), sigma=st.floats(0, 30))
def test_soft_band_targets_are_distributions_that_fall_with_age(ages, sigma):
    import numpy as np

    t = labels.soft_band_targets(ages, sigma)
    assert t.shape == (len(ages), 3) and (t >= 0).all() and np.allclose(t.sum(1), 1, atol=1e-6)
    order = np.argsort(ages, kind="stable")
    young, old = t[order, 0], t[order, 2]
    assert (np.diff(young) <= 1e-6).all() and (np.diff(old) >= -1e-6).all()  # older: less young, more old
    if sigma == 0:
        assert (t.argmax(1) == labels.band_of_ages(ages)).all() and (t.max(1) == 1).all()


def test_soft_band_targets_split_the_edges_evenly():
    t = labels.soft_band_targets([29, 30, 59, 60, 45, 15], 6)
    assert abs(t[0, 0] - t[1, 1]) < 1e-6 and 0.5 < t[0, 0] < 0.6  # 29 and 30 mirror each other across 29.5
    assert abs(t[2, 1] - t[3, 2]) < 1e-6
    assert t[4, 1] > 0.98 and t[5, 0] > 0.98  # far from an edge: the band itself


def test_soft_targets_keep_mask_and_gender_and_spread_the_age():
    import numpy as np

    classes = [labels.encode(1, 1, 0), labels.encode(2, 0, 2)]
    t = labels.soft_targets(classes, [29, 61], 6)
    mask, gender, band = labels.marginals(t)
    assert np.allclose(mask, np.eye(3)[[1, 2]]) and np.allclose(gender, np.eye(2)[[1, 0]])
    assert np.allclose(band, labels.soft_band_targets([29, 61], 6), atol=1e-6)
    assert np.allclose(labels.soft_targets(classes, [29, 61], 0), np.eye(18)[classes])
