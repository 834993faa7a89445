"""One ranking of label suspects from every signal: the model's out-of-fold probabilities and the face prior.

Each source says, for each field, how probable the label as given is. Put on one scale (log-probabilities,
calibrated on the catalog's own labels, which are mostly right), they add up as independent evidence:

- gender, per person: the model's log-probability of the labelled gender averaged over the person's photos
  (weighted by P(no mask), as people pooling does: the unmasked photo says most),
  plus the face prior's on the unmasked photo; each source is calibrated to the labels per labelled age band
  (`calibrated_gender`: the networks' gender errors depend on age — on facebench old women read as men and boys
  as women — so an old woman the networks call a man is less suspect than a 40-year-old they call one);
- a second face network (HSE-FaceRes, maskkit/faces/faceres.py) on the same photo, when its weights are there,
  adds its gender log-probability like the prior's, and its age evidence shares the prior's weight (their age
  misses correlate; the two are averaged);
- age, per person: the model's band log-probability as above, plus the labelled *age* against the prior's
  age estimate (a robust line maps the estimate onto the labels' scale; a Student-t of the residual's
  spread scores it), so that "labelled 22, looks 44" counts even when the model is unsure of the band and
  "labelled 35, looks 58" counts inside one band;
- mask, per image: the model's calibrated log-probability of the image's mask state; an `incorrect_mask`
  that looks correctly worn and a `normal` that wears a mask are image suspects, and an incorrect_mask /
  normal pair each predicted as the other's kind is one swap suspect (both images' evidence added). The
  worst single image is charged for having been picked from several: -log of its share of the prior odds that one
  of the person's images is the wrong one (an incorrect_mask or normal file 10 times a mask1..5 file's,
  MASK_FILE_ODDS; log(number of images) when all are alike).

Each source's word on a person saturates (`robust`, SOURCE_FAILURE): a network sometimes reads the wrong face,
an occluded one (a cup before the mouth, someone else's sunglasses) or a face of its blind spot, and then it is
sure and wrong; one source alone can doubt a label by about log(SOURCE_FAILURE) = -3 nats, sources that agree
by more. (The mask field has one source per image and is left as it is.)

Every score is a log-probability-like number (0: the evidence agrees; -5: about e^-5 odds against), so the
fields compare and a person's score is their most suspect field. Reading the probabilities and running the
prior on one unmasked photo per person costs seconds; nothing is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import labels as L
from .people import pooled_log_probs

MIN_AGE_SPREAD = 4.0  # years: the residual spread is never taken below this (a near-perfect fit is luck)
T_DOF = 4.0  # Student-t degrees of freedom for age residuals: the prior's rare large misses do not dominate
EPS = 1e-6


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, EPS, 1.0))


# the chance that one source's reading of a person is void (the wrong or an occluded face, a network's blind spot):
# its evidence is log((1 - e) p + e), at most about log(e) = -3 nats against the label. Chosen a priori as a round
# number; bench/suspects.py (seeds 0-2): planted errors in the combined top 30 18/20/18 -> 18/20/20, flat for
# e = 0.03-0.08 (without it, a network sure and wrong about one face put correctly labelled people at the top)
SOURCE_FAILURE = 0.05


def robust(log_p: float) -> float:
    """A source's log-probability (or log-likelihood ratio, <= 0) of the label, saturating at log(SOURCE_FAILURE)."""
    return float(np.log((1.0 - SOURCE_FAILURE) * np.exp(min(log_p, 0.0)) + SOURCE_FAILURE))


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fit_temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that makes log_softmax(logp / T) most likely for the labels `y` (mostly right)."""
    from scipy.optimize import minimize_scalar

    if len(y) < 5:
        return 1.0
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / math.exp(log_t))[rows, y].mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def calibrated(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, K) log-probabilities at the temperature fitted to the labels."""
    return log_softmax(logp / fit_temperature(logp, y))


MIN_BAND_PEOPLE = 12  # people an age band needs (and 3 of each gender) for its own gender calibration
MIN_GENDER_PEOPLE = 5  # people of each gender the per-band calibration needs at all (else one temperature)
CALIBRATION_FOLDS = 10  # cross-fitting folds of that regression
GENDER_C = 10.0  # inverse L2 strength of that regression: mild (the labels are mostly right; a few hundred people)


def calibrated_gender(logp: np.ndarray, y: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """(N, 2) gender log-probabilities calibrated to the labels `y` (mostly right) per labelled age band `bands`.

    A logistic regression on the source's log-odds: one slope for everybody and, for each band that has
    MIN_BAND_PEOPLE people (3 of each gender), its own slope and offset on top (the L2 penalty keeps them near
    zero unless the band's labels say otherwise): how far to trust the source, and which way it leans, for people
    of that age. The face networks call old women men and boys women far more often than they err on adults in
    the middle (facebench: of the 20 people neither planted nor confirmed errors they most disagree with on gender,
    16 are under 30 or 60 and over, against 57% of all people), and a flip among adults is what a reviewer looks
    for. Too few people of a gender: the one temperature of `calibrated`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y, bands = np.asarray(y, int), np.asarray(bands, int)
    fewer = min(int((y == 0).sum()), int((y == 1).sum()))
    if fewer < MIN_GENDER_PEOPLE:
        return calibrated(logp, y)
    z = logp[:, 1] - logp[:, 0]
    columns = [z]  # one slope for everybody, and each band's own lean and slope on top of it (shrunk towards none)
    for band in sorted(set(bands.tolist())):
        inside = bands == band
        if inside.sum() >= MIN_BAND_PEOPLE and min(int((y[inside] == 0).sum()), int((y[inside] == 1).sum())) >= 3:
            columns += [z * inside, inside.astype(float)]
    x = np.stack(columns, 1)
    out = np.empty((len(y), 2))
    # cross-fitted: each person's calibration is learnt on the others, so a wrong label cannot bend its own (with
    # an offset and a few hundred people, a flip near the others' log-odds would otherwise pull the boundary to it)
    for train, held in StratifiedKFold(min(CALIBRATION_FOLDS, fewer), shuffle=True, random_state=0).split(x, y):
        model = LogisticRegression(C=GENDER_C, max_iter=5000).fit(x[train], y[train])
        out[held] = model.predict_log_proba(x[held])
    return out


@dataclass
class AgeFit:
    """label age ~ intercept + slope * estimate, residual spread `scale` (robust)."""

    intercept: float
    slope: float
    scale: float

    def expected(self, estimate: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * estimate

    def score(self, age: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """Log-density ratio of the labelled age against the most likely one (0 at the fitted age, < 0 away)."""
        r = (np.asarray(age, float) - self.expected(estimate)) / self.scale
        return -(T_DOF + 1) / 2 * np.log1p(r * r / T_DOF)


def fit_age(age: np.ndarray, estimate: np.ndarray) -> AgeFit:
    """A robust line from the prior's estimates to the labelled ages (Huber), spread from the residuals' MAD."""
    age, estimate = np.asarray(age, float), np.asarray(estimate, float)
    if len(age) < 8 or np.ptp(estimate) < 1e-6:
        scale = max(MIN_AGE_SPREAD, float(np.std(age - estimate)) if len(age) else 10.0)
        return AgeFit(0.0, 1.0, scale)
    from sklearn.linear_model import HuberRegressor

    model = HuberRegressor(epsilon=1.5, max_iter=500).fit(estimate[:, None], age)
    slope = float(np.clip(model.coef_[0], 0.2, 3.0))
    intercept = float(np.median(age - slope * estimate))
    residual = age - (intercept + slope * estimate)
    scale = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return AgeFit(intercept, slope, max(MIN_AGE_SPREAD, scale))


@dataclass
class PersonPrior:
    """The face prior on one person's unmasked photo."""

    gender: np.ndarray  # (2,) probabilities
    age: float  # expected age, years


# how much likelier an image of each kind is to carry a wrong mask label than a mask1..5 file: every mask label
# error the competition's teams found (reference/competition.md) is an incorrect_mask or normal file (swapped, or an
# incorrect_mask that is correctly worn), none a mask1..5 file; the model's doubts about a mask1..5 photo are mostly
# its own errors
MASK_FILE_ODDS = {"incorrect_mask": 10.0, "normal": 10.0}
COPY_EXACT, COPY_NEAR = -8.0, -6.0  # log-evidence of "this file is (nearly) the same photo as another kind's"


def combine(people: dict[int, tuple], images: dict, model: dict | None, prior: dict[int, PersonPrior],
            copies: dict[int, list[tuple]] | None = None, faceres: dict[int, PersonPrior] | None = None) -> list[dict]:
    """Suspect rows, most suspect first.

    people: profile id -> (person, folder, gender, age) as labelled now;
    images: image id -> (mask state, profile id, kind) as labelled now;
    model: {"probs": (N, 18), "image_ids": (N,)} out-of-sample probabilities, or None;
    prior: profile id -> PersonPrior (people without a readable unmasked photo are absent);
    copies: profile id -> [(image id, kind, kind it copies, exact)]: an incorrect_mask or normal file that is
    the same photo as one of the person's mask photos (byte for byte, or nearly), so its label cannot be right;
    faceres: profile id -> a second face network's guesses on the unmasked photo (maskkit/faces/faceres.py),
    scored like the prior's (its own calibration per age band and age line) and added as one more source.
    """
    pids = sorted(people)
    evidence: dict[int, dict] = {p: {"gender": [], "age": [], "mask": []} for p in people}
    details: dict[int, dict] = {p: {} for p in people}
    n_images: dict[int, int] = {}

    if model is not None and len(model["image_ids"]):
        image_ids = [int(i) for i in model["image_ids"]]
        keep = [n for n, i in enumerate(image_ids) if i in images and images[i][1] in people]
        probs = model["probs"][keep]
        ids = [image_ids[n] for n in keep]
        owner = np.array([images[i][1] for i in ids])
        p_mask, p_gender, p_band = L.marginals(probs)
        # mask, per image
        y_mask = np.array([images[i][0] for i in ids])
        lp_mask = calibrated(_log(p_mask / p_mask.sum(1, keepdims=True)), y_mask)
        # gender and band, per person: the photos' log-probabilities pooled as people pooling pools them (weights
        # P(no mask) + a floor: the unmasked photo says most), then calibrated
        people_order, pooled = pooled_log_probs(_log(np.concatenate([p_gender, p_band], 1)), p_mask, owner)
        mean_lg, mean_lb = pooled[:, :len(L.GENDERS)], pooled[:, len(L.GENDERS):]
        order = people_order.tolist()
        y_g = np.array([L.gender_index(people[p][2]) for p in order])
        y_b = np.array([L.age_band(people[p][3]) for p in order])
        lg = calibrated_gender(mean_lg, y_g, y_b)
        lb = calibrated(mean_lb, y_b)
        for k, p in enumerate(order):
            evidence[p]["gender"].append(("model", robust(lg[k, y_g[k]])))
            evidence[p]["age"].append(("model", robust(lb[k, y_b[k]])))
            details[p]["model_gender"] = L.GENDERS[int(lg[k].argmax())]
            details[p]["model_gender_p"] = float(np.exp(lg[k].max()))
            details[p]["model_band"] = L.AGE_BANDS[int(lb[k].argmax())]
            details[p]["model_band_p"] = float(np.exp(lb[k].max()))
        for p in order:
            sel = np.flatnonzero(owner == p)
            n_images[p] = len(sel)
            suspects = []
            for n in sel:
                given = int(y_mask[n])
                said = int(lp_mask[n].argmax())
                suspects.append((float(lp_mask[n, given]), [ids[n]], given, said))
            # an incorrect_mask / normal pair each predicted as the other's kind: one swap suspect
            inc = [s for s in suspects if s[2] == 1 and s[3] == 2]
            nor = [s for s in suspects if s[2] == 2 and s[3] == 1]
            best = None
            if suspects:
                # the most suspect image, charged for having been picked from several: -log of its share of the
                # prior odds that an image of this person is the wrong one (uniform: log of the number of images)
                weight = [MASK_FILE_ODDS.get(images[s[1][0]][2], 1.0) for s in suspects]
                charged = [s[0] - math.log(w / sum(weight)) for s, w in zip(suspects, weight)]
                pick = int(np.argmin(charged))
                best = (charged[pick], suspects[pick])
            if inc and nor:
                a, b = min(inc, key=lambda s: s[0]), min(nor, key=lambda s: s[0])
                swap = (a[0] + b[0], (a[0] + b[0], a[1] + b[1], "swap", None))
                if best is None or swap[0] < best[0]:
                    best = swap
            if best is not None:
                score, (_, which, given, said) = best
                evidence[p]["mask"].append(("model", min(0.0, score)))
                details[p]["mask_images"] = [images[i][2] for i in which]
                details[p]["mask_image_ids"] = which
                details[p]["mask_kind"] = _mask_kind(given, said)

    faces = [(source, found) for source, found in (("prior", prior), ("faceres", faceres)) if found]
    for source, found in faces:
        order = sorted(p for p in found if p in people)
        if not order:
            continue
        lp = _log(np.stack([found[p].gender for p in order]))
        y_g = np.array([L.gender_index(people[p][2]) for p in order])
        lg = calibrated_gender(lp, y_g, np.array([L.age_band(people[p][3]) for p in order]))
        est = np.array([found[p].age for p in order])
        ages = np.array([people[p][3] for p in order], float)
        fit = fit_age(ages, est)
        age_scores = fit.score(ages, est)
        looks = fit.expected(est)
        for k, p in enumerate(order):
            evidence[p]["gender"].append((source, robust(lg[k, y_g[k]])))
            # the face networks' age misses go together (their residuals correlate ~0.67 on facebench): each
            # person's face-network age evidence is their mean, not their sum; gender errors correlate less
            # (~0.38) and add up
            shared = sum(1 for _, other in faces if p in other)
            evidence[p]["age"].append((source, robust(age_scores[k]) / shared))
            details[p][f"{source}_gender"] = L.GENDERS[int(lg[k].argmax())]
            details[p][f"{source}_gender_p"] = float(np.exp(lg[k].max()))
            details[p][f"{source}_age"] = float(looks[k])
            details[p][f"{source}_age_spread"] = fit.scale

    for p, found in (copies or {}).items():
        if p not in evidence or not found:
            continue
        image_id, kind, of_kind, exact = min(found, key=lambda c: not c[3])  # an exact copy says most
        evidence[p]["mask"] = [("copy", COPY_EXACT if exact else COPY_NEAR)]  # stronger than any model's guess
        details[p]["mask_images"] = [kind]
        details[p]["mask_image_ids"] = [image_id]
        what = "looks correctly worn" if kind == "incorrect_mask" and of_kind.startswith("mask") else "is mislabelled"
        details[p]["mask_kind"] = f"{kind} {what} (the same photo as {of_kind}{'' if exact else ', nearly'})"

    rows = []
    for p in pids:
        person, folder, gender, age = people[p]
        fields = {f: sum(v for _, v in ev) for f, ev in evidence[p].items() if ev}
        if not fields:
            continue
        field = min(fields, key=fields.get)
        d = details[p]
        looks = _looks(d)
        rows.append({
            "profile_id": int(p), "person": person, "folder": folder, "gender": gender, "age": age,
            "field": field, "score": float(fields[field]),
            "gender_score": fields.get("gender"), "age_score": fields.get("age"), "mask_score": fields.get("mask"),
            "sources": {f: {s: round(v, 3) for s, v in ev} for f, ev in evidence[p].items() if ev},
            "mask_image": ", ".join(d["mask_images"]) if d.get("mask_images") else None,
            "mask_image_ids": d.get("mask_image_ids"), "mask_kind": d.get("mask_kind"),
            "predicted_gender": d.get("model_gender") or d.get("prior_gender"),
            "predicted_band": d.get("model_band") or (L.AGE_BANDS[L.age_band(int(round(looks)))]
                                                     if looks is not None else None),
            "predicted_age": looks, "images": n_images.get(p, 0),
            "evidence": _evidence_text(field, people[p], d),
            "evidence_by_field": {f: _evidence_text(f, people[p], d) for f in fields},
            "source": "combined",
        })
    rows.sort(key=lambda r: r["score"])
    return rows


def _looks(d: dict) -> float | None:
    """The age the face networks put on a person (their mean, each on the labels' scale), or None."""
    said = [d[k] for k in ("prior_age", "faceres_age") if k in d]
    return float(np.mean(said)) if said else None


def _mask_kind(given: int, said: int | None) -> str:
    if said is None:
        return "incorrect_mask and normal look swapped"
    if given == said:
        return f"{L.MASK_STATES[given]} (as labelled)"
    if given == 1 and said == 0:
        return "incorrect_mask looks correctly worn"
    if given == 2:
        return "normal photo wears a mask" if said == 0 else "normal photo looks incorrectly worn"
    return f"labelled {L.MASK_STATES[given]}, looks {L.MASK_STATES[said]}"


def _evidence_text(field: str, person: tuple, d: dict) -> str:
    if field == "mask":
        return f"{d.get('mask_kind', 'mask')}: {', '.join(d.get('mask_images') or [])}"
    if field == "gender":
        said = {"model": ("model_gender", "model_gender_p"), "prior": ("prior_gender", "prior_gender_p"),
                "faceres": ("faceres_gender", "faceres_gender_p")}
        parts = [f"{who}: {d[label]} {d[p]:.2f}" for who, (label, p) in said.items() if label in d]
        return f"labelled {person[2]}; " + ", ".join(parts)
    parts = [f"model: {d['model_band']} {d['model_band_p']:.2f}"] if "model_band" in d else []
    for who in ("prior", "faceres"):
        if f"{who}_age" in d:
            parts.append(f"{who}: looks {d[f'{who}_age']:.0f} (±{d[f'{who}_age_spread']:.0f})")
    return f"labelled {person[3]}; " + ", ".join(parts)
