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
