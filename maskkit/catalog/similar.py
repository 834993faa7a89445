"""The same person twice, also when the photos are not byte-identical (re-saved, resized, re-encoded):
a 64-bit perceptual hash (dHash) of each person's normal photo, stored on the image row once computed,
and near pairs found through 4 exact 16-bit bands (two hashes within 3 bits share a band) then checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select, update

from .models import DataRoot, Image, Profile

NEAR_BITS = 3  # hashes this close are one photo (re-encoded JPEGs stay within 1-2 bits)


def dhash(path: Path) -> int | None:
    """The dHash of an image file (signed 64-bit, as the database stores it); None when unreadable."""
    from PIL import Image as PILImage

    from ..errors import MaskkitError
    from ..images import open_image

    try:
        img = open_image(path, draft=(64, 64))
        small = np.asarray(img.convert("L").resize((9, 8), PILImage.BILINEAR), dtype=np.int16)
    except MaskkitError:
        return None
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def normal_hashes(session, profile_ids: list[int] | None = None) -> dict[int, int]:
    """profile id -> dHash of their normal photo, computing (and storing) the missing ones."""
    stmt = (select(Image.id, Image.profile_id, Image.phash, DataRoot.path, Image.path)
            .join(Profile, Profile.id == Image.profile_id).join(DataRoot, DataRoot.id == Profile.root_id)
            .where(Image.kind == "normal", Image.damaged.is_(False)))
    if profile_ids is not None:
        stmt = stmt.where(Image.profile_id.in_(profile_ids))
    out, computed = {}, []
    for image_id, pid, phash, root, rel in session.connection().execute(stmt).all():
        if phash is None:
            phash = dhash(Path(root) / rel)
            if phash is None:
                continue
            computed.append({"b_id": image_id, "b_phash": phash})
        out[pid] = phash
    if computed:
        from sqlalchemy import bindparam

        session.connection().execute(update(Image).where(Image.id == bindparam("b_id")).values(
            phash=bindparam("b_phash")), computed)
    return out


def near_pairs(hashes: dict[int, int], max_bits: int = NEAR_BITS) -> list[tuple[int, int, int]]:
    """(person a, person b, differing bits) for every pair whose hashes differ in at most max_bits."""
    if len(hashes) < 2:
        return []
    ids = np.fromiter(hashes.keys(), dtype=np.int64)
    values = np.fromiter((h & ((1 << 64) - 1) for h in hashes.values()), dtype=np.uint64)
    found = set()
    for band in range(4):
        keys = (values >> np.uint64(16 * band)) & np.uint64(0xFFFF)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends):
            members = order[s:e]
            for i in range(len(members) - 1):
                rest = members[i + 1:]
                bits = _popcount(values[members[i]] ^ values[rest])
                for j in np.flatnonzero(bits <= max_bits):
                    pa, pb = int(ids[members[i]]), int(ids[rest[j]])
                    found.add((min(pa, pb), max(pa, pb), int(bits[j])))
    return sorted(found)


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.int64)
    for shift in range(0, 64, 8):
        count += _BYTE_BITS[((x >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64)]
    return count


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
