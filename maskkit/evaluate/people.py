"""One person's photos decide gender and age together, from the least-masked of them (`train.pool_people`).

An eval set holds every person's photos (the competition: 7 each, masks worn, worn wrong and none), and a
masked face shows its age and gender less well than the same face unmasked: on facebench out of fold the
default's age F1 is 0.54 on worn-mask photos and 0.67 on unmasked ones. So at prediction time the photos are
grouped into people by what a mask never covers, and every photo of a group takes the group's gender and age
log-probabilities averaged with weights P(no mask) of each photo: the unmasked photo speaks for all of them,
and a group without one leans on whichever looks least masked. Each photo keeps its own mask prediction.

Grouping: a photo's signature is the upper part of the photo itself (hair, eyes, forehead and the background
beside them: `SIGNATURE_ROWS` of its height, small and in colour, centred and unit-length); two photos are
close when their signatures' cosine distance is small. Photos closer than a threshold join (connected
components), a group larger than the most photos one training person has is split by average linkage, and
what stays too large is left unpooled. The threshold is learnt on the catalog's own labelled people: the one
whose grouping of their photos agrees best with who they are (adjusted Rand index), so it follows how alike
one person's photos are in the user's data (on facebench, where every photo of a person is one photograph
with masks composited, the photos group almost perfectly; seven shots of one session group less well).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import labels as L

SIGNATURE_ROWS = 0.4  # the top share of a photo that a mask does not reach
SIGNATURE_SIZE = (48, 64)  # width, height the photo is shrunk to before its top rows are taken
THRESHOLDS = np.round(np.arange(0.02, 0.61, 0.02), 3)  # the cosine distances tried when learning
LEARN_PEOPLE = 400  # labelled people sampled to learn the threshold
NO_MASK_FLOOR = 1e-3  # every photo keeps this much weight, so a group with no unmasked photo still pools


@dataclass
class Grouping:
    """How an image set is grouped into people: the learnt distance threshold, the largest group kept, and how
    well it grouped the labelled people it was learnt on."""

    threshold: float
    max_size: int
    agreement: float  # adjusted Rand index on the labelled people
    composition: list[int] | None = None  # photos per mask state of one person's full set (5, 1, 1), if people share one

    def as_record(self) -> dict:
        return {"threshold": self.threshold, "max_size": self.max_size, "agreement": self.agreement,
                "rows": SIGNATURE_ROWS, "composition": self.composition}


def signatures(paths: list[str], progress=None, top: float = SIGNATURE_ROWS) -> np.ndarray:
    """(N, D) unit-length signatures of photos, from the `top` share of each (files the catalog names; an
    unreadable one is a clear error)."""
    from ..images import open_image

    width, height = SIGNATURE_SIZE
    rows = max(1, int(round(height * top)))
    out = np.zeros((len(paths), rows * width * 3), np.float32)
    for n, path in enumerate(paths):
        img = open_image(path, draft=(width * 2, height * 2)).resize((width, height))
        top = np.asarray(img, np.float32)[:rows].ravel()
        top -= top.mean()
        out[n] = top / (np.linalg.norm(top) + 1e-6)
        if progress and (n % 200 == 0 or n == len(paths) - 1):
            progress("photo signatures", n + 1, len(paths))
    return out


def group(sig: np.ndarray, threshold: float, max_size: int, block: int = 2048) -> np.ndarray:
    """(N,) group labels: photos closer than `threshold` joined (connected components of the pairs, found block
    by block so 12,600 photos need no N x N matrix at once); a group over `max_size` is split by average linkage
    at the same threshold, and parts still too large become singletons (unpooled)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    if n == 0:
        return np.zeros(0, np.int64)
    rows, cols = [], []
    for start in range(0, n, block):
        dist = 1.0 - sig[start:start + block] @ sig.T
        i, j = np.nonzero(dist < threshold)
        rows.append(i + start)
        cols.append(j)
    i, j = np.concatenate(rows), np.concatenate(cols)
    _, labels = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    out = labels.astype(np.int64)
    next_label = out.max() + 1
    for g in np.nonzero(np.bincount(out) > max_size)[0]:
        members = np.nonzero(out == g)[0]
        parts = _average_linkage(sig[members], threshold)
        for part in np.unique(parts):
            chosen = members[parts == part]
            if len(chosen) > max_size:  # no clear people inside: nobody here is pooled
                out[chosen] = np.arange(next_label, next_label + len(chosen))
                next_label += len(chosen)
            else:
                out[chosen] = next_label
                next_label += 1
    return out


def _average_linkage(sig: np.ndarray, threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    if len(sig) < 2:
        return np.zeros(len(sig), np.int64)
    dist = np.clip(1.0 - sig @ sig.T, 0.0, None)
    return AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="precomputed",
                                   linkage="average").fit_predict(dist)


def learn(sig: np.ndarray, person: np.ndarray, seed: int = 0, mask: np.ndarray | None = None) -> Grouping:
    """The threshold that groups labelled photos (`person`: who each is) most like the truth, on up to
    LEARN_PEOPLE people; max_size: the most photos one of them has; with their mask states (`mask`), the
    composition of one person's full set (`composition`)."""
    from sklearn.metrics import adjusted_rand_score

    people = np.unique(person)
    if len(people) > LEARN_PEOPLE:
        people = np.random.default_rng(seed).choice(people, LEARN_PEOPLE, replace=False)
    rows = np.isin(person, people)
    s, p = sig[rows], person[rows]
    max_size = int(np.bincount(np.unique(p, return_inverse=True)[1]).max())
    best, worse = (-1.0, float(THRESHOLDS[0])), 0
    for t in THRESHOLDS:  # ascending; past the best, groups only merge people: stop once clearly worse
        score = adjusted_rand_score(p, group(s, t, max_size))
        if score > best[0]:
            best, worse = (score, float(t)), 0
        elif score < best[0] - 0.1:
            worse += 1
            if worse == 3:
                break
    full = composition(person, mask) if mask is not None else None
    return Grouping(threshold=best[1], max_size=max_size, agreement=float(best[0]), composition=full)


COMPOSITION_SHARE = 0.8  # the share of labelled people that must hold one composition for it to be used
ASSIGNED = 0.998  # the probability a photo's assigned mask state gets (the others share the rest)


def composition(person: np.ndarray, mask: np.ndarray) -> list[int] | None:
    """Photos per mask state of one person's full set, when at least COMPOSITION_SHARE of the labelled people have
    the same (the competition: 5 worn, 1 worn wrong, 1 without); else None."""
    people = np.unique(person)
    if len(people) == 0:
        return None
    counts = [tuple(np.bincount(mask[person == p], minlength=len(L.MASK_STATES)).tolist()) for p in people]
    values, freq = np.unique(np.array(counts), axis=0, return_counts=True)
    best = int(freq.argmax())
    return [int(v) for v in values[best]] if freq[best] >= COMPOSITION_SHARE * len(people) else None


def assign_masks(mask: np.ndarray, groups: np.ndarray, composition: list[int]) -> np.ndarray:
    """(N, 3) mask probabilities with each group of exactly one full set's size given the composition's states,
    photo to state by the most probable assignment (Hungarian); other groups unchanged."""
    from scipy.optimize import linear_sum_assignment

    slots = np.repeat(np.arange(len(composition)), composition)
    out = mask.copy()
    order = np.argsort(groups, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(groups[order])) + 1):
        if len(members) != len(slots):
            continue
        rows, cols = linear_sum_assignment(-np.log(mask[members][:, slots] + 1e-12))
        out[members] = (1 - ASSIGNED) / (len(composition) - 1)
        out[members[rows], slots[cols]] = ASSIGNED
    return out


def unmasked_weight(mask_probs: np.ndarray) -> np.ndarray:
    """(N, 3) mask-state probabilities -> (N,) how much each photo says of its person's gender and age:
    P(no mask) + NO_MASK_FLOOR (the unmasked photo says most)."""
    return np.asarray(mask_probs)[:, L.MASK_STATES.index("not_wear")] + NO_MASK_FLOOR


def pooled_log_probs(log_p: np.ndarray, mask_probs: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) log-probabilities of one field -> (the groups in sorted order, (G, K) each group's photos' rows
    averaged with weights `unmasked_weight`): how a person's photos say their gender or age together."""
    keys, inverse = np.unique(np.asarray(groups), return_inverse=True)
    weight = unmasked_weight(mask_probs)
    weight = weight / np.bincount(inverse, weights=weight)[inverse]
    out = np.zeros((len(keys), np.shape(log_p)[1]))
    np.add.at(out, inverse, weight[:, None] * log_p)
    return keys, out


def pool(probs: np.ndarray, groups: np.ndarray, composition: list[int] | None = None) -> np.ndarray:
    """(N, 18) probabilities with every group's gender and age marginals replaced by the group's log-probabilities
    averaged with weights P(no mask) (+ NO_MASK_FLOOR) of its photos; the mask marginal of each photo is its own,
    unless `composition` is given: then a group of one full set's size gets its mask states by assignment
    (`assign_masks`). A photo alone in its group is unchanged."""
    p = np.asarray(probs, np.float64).reshape(-1, len(L.MASK_STATES), len(L.GENDERS), len(L.AGE_BANDS))
    mask, gender, age = p.sum((2, 3)), p.sum((1, 3)), p.sum((1, 2))
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    pooled = pooled_log_probs(np.log(np.concatenate([gender, age], 1) + 1e-12), mask, groups)[1][inverse]
    log_g, log_a = pooled[:, :len(L.GENDERS)], pooled[:, len(L.GENDERS):]
    gender = np.exp(log_g - log_g.max(1, keepdims=True))
    age = np.exp(log_a - log_a.max(1, keepdims=True))
    gender /= gender.sum(1, keepdims=True)
    age /= age.sum(1, keepdims=True)
    if composition:
        mask = assign_masks(mask, groups, composition)
    out = mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]
    return out.reshape(len(p), -1).astype(np.asarray(probs).dtype)


def photo_paths(catalog, image_ids) -> list[str]:
    """The original photo of each catalogued image (the signature reads photos, not crops)."""
    from sqlalchemy import select

    from ..catalog.models import DataRoot, Image, Profile

    ids = [int(i) for i in image_ids]
    with catalog.session() as session:
        where = dict((i, f"{root}/{path}") for i, root, path in session.execute(
            select(Image.id, DataRoot.path, Image.path).join(Profile, Profile.id == Image.profile_id)
            .join(DataRoot, DataRoot.id == Profile.root_id).where(Image.id.in_(ids))))
    return [where[i] for i in ids]


def grouped(catalog, image_ids, person_ids, masks=None, progress=None) -> tuple[Grouping, np.ndarray]:
    """Labelled images (out-of-fold predictions): the grouping learnt on their own people (and, given their mask
    states, the composition of one person's full set), and their groups."""
    sig = signatures(photo_paths(catalog, image_ids), progress)
    grouping = learn(sig, np.asarray(person_ids), mask=None if masks is None else np.asarray(masks))
    return grouping, group(sig, grouping.threshold, grouping.max_size)


def groups_for(record: dict, paths: list[str], progress=None) -> np.ndarray:
    """An unlabelled image set (eval images) grouped as a recorded grouping (`Grouping.as_record`) says."""
    sig = signatures(paths, progress, float(record.get("rows", SIGNATURE_ROWS)))
    return group(sig, float(record["threshold"]), int(record["max_size"]))
