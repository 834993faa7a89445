"""The built-in age backend: age prototypes learnt from the catalog's own faces (`--age-backend prototype`).

The classic prototype transform (Burt & Perrett 1995; detail scaling after Tiddeman et al. 2001), on dlib's
68-point landmark model (shipped inside `face-recognition-models`, offline):

- fitting: every usable real `normal` photo is landmarked (68 points + 10 forehead points extrapolated
  above the brows), its shape aligned to a common frame and its pixels warped to the mean shape
  (piecewise affine over a Delaunay mesh). A prototype for any age is a Gaussian-weighted mean (sigma
  `AGE_SIGMA` years) of the shapes, the shape-free textures and the local detail energy (|image - blur|) of
  the faces near that age. A ridge regression on the shape-free textures estimates a face's own age.
- transforming a face to `target_age`: the face's landmarks move by the shape difference between the
  prototypes of the target age and of its estimated age; the colour difference is added and fine detail
  (wrinkles, skin texture) is scaled by the ratio of the two prototypes' detail energies, both warped onto
  the moved face and feathered at its edge. Only the face region changes; size and background stay.

`fit_prototypes` learns from a catalog; `PrototypeAger.save/load` keep a fitted model in one .npz file.
Judge it with `maskkit generate age-check` (an independent age estimator and face descriptor).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from ..progress import Progress

VERSION = "age-prototype-1"
CANVAS = 128  # the shape-free texture's side in pixels
AGE_GRID = np.arange(0, 96, 3)  # prototypes are stored at these ages and interpolated between them
AGE_SIGMA = 6.0  # years: how far a face's age spreads into neighbouring prototypes
MIN_FACES = 12  # fewer usable faces than this cannot make prototypes
FOREHEAD = 0.42  # forehead points sit this fraction of the brow-chin distance above the brows
DETAIL_SIGMA = 1.6  # pixels of the canvas: what counts as fine detail
DETAIL_RATIO = (0.7, 4.0)  # detail is scaled within this range
COLOUR_RATIO = (0.5, 2.0)  # and shading within this one
DEFAULT_STRENGTH = 2.0  # the prototypes' difference is applied this many times (a caricature of ageing):
# on facebench-large, 2.0 moves the age estimate of young faces from 26 to 46 years and keeps 92% of them the same
# person by dlib's descriptor; 2.5: 50 years, 80% kept
RING = 24  # points on the fixed ring around the face that keeps the background still


# ---------------------------------------------------------------- landmarks and meshes


def landmarks68(rgb: np.ndarray, box) -> np.ndarray:
    """(78, 2) points: dlib's 68 landmarks inside a face box plus 10 forehead points above the brows."""
    import dlib

    predictor = _predictor()
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(x1, y1, x2, y2))
    points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
    return with_forehead(points)


_PREDICTOR: dict = {}


def _predictor():
    """dlib's 68-point landmark model from `face-recognition-models` (loaded once per process)."""
    if "68" not in _PREDICTOR:
        import dlib

        from .prior import _model_file

        _PREDICTOR["68"] = dlib.shape_predictor(str(_model_file(
            "face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat")))
    return _PREDICTOR["68"]


def with_forehead(points68: np.ndarray) -> np.ndarray:
    brows = points68[17:27]
    chin = points68[8]
    up = brows.mean(0) - chin
    return np.vstack([points68, brows + up * FOREHEAD])


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, shift) taking src points onto dst (least squares, Umeyama)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / s.var(0).sum()
    a = scale * rot
    return np.hstack([a, (mu_d - a @ mu_s)[:, None]])


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def _ring(points: np.ndarray, spread: float = 1.9) -> np.ndarray:
    """Fixed points on an ellipse around the face (they anchor the warp so the background stays)."""
    centre = points.mean(0)
    half = (points.max(0) - points.min(0)) / 2 * spread
    angles = np.linspace(0, 2 * np.pi, RING, endpoint=False)
    return centre + np.stack([np.cos(angles) * half[0], np.sin(angles) * half[1]], 1)


def warp_maps(src: np.ndarray, dst: np.ndarray, shape: tuple[int, int],
              region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Piecewise-affine maps for cv2.remap: output pixel (at dst geometry) -> where to read it in the source.
    Pixels outside the mesh read themselves; `inside` marks the ones the mesh covers."""
    from scipy.spatial import Delaunay

    h, w = shape
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    inside = np.zeros((h, w), bool)
    x0, y0, x1, y1 = region if region is not None else (0, 0, w, h)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return map_x, map_y, inside
    mesh = Delaunay(dst)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    simplex = mesh.find_simplex(pts)
    hit = simplex >= 0
    t = mesh.transform[simplex[hit]]
    b = np.einsum("nij,nj->ni", t[:, :2], pts[hit] - t[:, 2])
    bary = np.c_[b, 1 - b.sum(1)]
    read = np.einsum("ni,nij->nj", bary, src[mesh.simplices[simplex[hit]]])
    yy, xx = pts[hit, 1].astype(int), pts[hit, 0].astype(int)
    map_x[yy, xx], map_y[yy, xx] = read[:, 0], read[:, 1]
    inside[yy, xx] = True
    return map_x, map_y, inside


def _remap(image: np.ndarray, map_x, map_y) -> np.ndarray:
    import cv2

    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _hull_mask(points: np.ndarray, shape: tuple[int, int], feather: float) -> np.ndarray:
    """1 inside the convex hull of the points, fading to 0 over `feather` pixels at its edge."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1)
    if feather <= 0:
        return mask.astype(np.float32)
    inner = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    return np.clip(inner / feather, 0, 1).astype(np.float32)


def _detail(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Local fine-detail energy: |image - blur(image)|, averaged over a neighbourhood."""
    import cv2

    high = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), sigma))
    return cv2.GaussianBlur(high, (0, 0), sigma * 2.5)


# ---------------------------------------------------------------- the model


@dataclass
class AgePrototypes:
    """What fitting learns: the mean shape (canvas frame), prototypes per age of AGE_GRID, and the age
    regression on shape-free textures."""

    mean_shape: np.ndarray  # (78, 2) canvas coordinates
    shapes: np.ndarray  # (A, 78, 2)
    textures: np.ndarray  # (A, CANVAS, CANVAS, 3) float32: colour relative to the face's mean colour
    details: np.ndarray  # (A, CANVAS, CANVAS) float32
    weights: np.ndarray  # (A,) effective number of faces behind each prototype
    regression: np.ndarray  # (D + 1,) ridge coefficients on the 32x32 gray texture, last = intercept
    faces: int
    key: str  # what it was fitted on

    def at(self, age: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shape, texture, detail) of the prototype at any age (linear between grid ages)."""
        age = float(np.clip(age, AGE_GRID[0], AGE_GRID[-1]))
        i = int(np.clip(np.searchsorted(AGE_GRID, age) - 1, 0, len(AGE_GRID) - 2))
        t = (age - AGE_GRID[i]) / (AGE_GRID[i + 1] - AGE_GRID[i])
        mix = lambda a: (1 - t) * a[i] + t * a[i + 1]  # noqa: E731
        return mix(self.shapes), mix(self.textures), mix(self.details)

    def estimate_age(self, texture: np.ndarray) -> float:
        x = _regression_input(texture)
        return float(np.clip(x @ self.regression[:-1] + self.regression[-1], AGE_GRID[0], AGE_GRID[-1]))

    def save(self, path: Path) -> Path:
        from ..files import atomic_path

        with atomic_path(Path(path), "age prototypes") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, version=VERSION, mean_shape=self.mean_shape, shapes=self.shapes,
                                textures=self.textures.astype(np.float16), details=self.details.astype(np.float16),
                                weights=self.weights, regression=self.regression, faces=self.faces, key=self.key)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "AgePrototypes":
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["version"]) != VERSION:
                    raise InvalidInput(f"{path}: age prototypes of version {data['version']}, this maskkit reads {VERSION}")
                return cls(data["mean_shape"], data["shapes"], data["textures"].astype(np.float32),
                           data["details"].astype(np.float32), data["weights"], data["regression"],
                           int(data["faces"]), str(data["key"]))
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"{path}: not a maskkit age-prototype file ({exc})") from None


def _regression_input(texture: np.ndarray) -> np.ndarray:
    import cv2

    small = cv2.resize(texture.mean(2).astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    hp = small - cv2.GaussianBlur(small, (0, 0), 1.0)
    return np.concatenate([small.ravel() - small.mean(), np.abs(hp).ravel() * 4])


def _canvas_shape(mean_shape: np.ndarray, points: np.ndarray) -> np.ndarray:
    return _apply(_similarity(points, mean_shape), points)


def _reference_shape(points: np.ndarray) -> np.ndarray:
    """A first mean shape: the points scaled into the canvas with a margin."""
    lo, hi = points.min(0), points.max(0)
    scale = (CANVAS * 0.84) / (hi - lo).max()
    return (points - (lo + hi) / 2) * scale + CANVAS / 2


def relative(texture: np.ndarray, face: np.ndarray) -> np.ndarray:
    """A shape-free texture divided by its face's mean colour: shading and detail, not skin tone (so the
    prototypes do not learn who happens to be old in the catalog)."""
    return texture / np.maximum(texture[face].mean(0), 8.0)


def shape_free(rgb: np.ndarray, points: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """The face's pixels warped onto the mean shape in the canvas (float32 CANVAS x CANVAS x 3)."""
    map_x, map_y, _ = warp_maps(points, mean_shape, (CANVAS, CANVAS))
    return _remap(rgb.astype(np.float32), map_x, map_y)


@dataclass
class FaceSample:
    """A face with a known age: its pixels, or the file they are read from when needed (fitting reads each
    photo twice instead of holding thousands in memory)."""

    box: tuple
    age: int
    rgb: np.ndarray | None = None
    path: Path | None = None

    def pixels(self) -> np.ndarray:
        if self.rgb is not None:
            return self.rgb
        from .generate import read_rgb

        return read_rgb(self.path)


def fit(faces: list[FaceSample], progress: Progress | None = None) -> AgePrototypes:
    """Prototypes and the age regression from faces with known ages (streamed: memory does not grow with them)."""
    points, ages, used = [], [], []
    for n, face in enumerate(faces, 1):
        try:
            p = landmarks68(face.pixels(), face.box)
        except RuntimeError:
            continue
        if np.isfinite(p).all():
            points.append(p)
            ages.append(face.age)
            used.append(face)
        if progress:
            progress("landmarks", n, len(faces))
    if len(points) < MIN_FACES:
        raise InvalidInput(f"age prototypes need at least {MIN_FACES} faces with landmarks, found {len(points)}")
    mean_shape = _reference_shape(points[0])
    for _ in range(3):  # generalised Procrustes: align to the mean, re-centre the mean in the canvas
        aligned = np.stack([_canvas_shape(mean_shape, p) for p in points])
        mean_shape = _reference_shape(aligned.mean(0))
    aligned = np.stack([_canvas_shape(mean_shape, p) for p in points])
    ages_arr = np.asarray(ages, np.float64)
    kernel = np.exp(-0.5 * ((AGE_GRID[:, None] - ages_arr[None]) / AGE_SIGMA) ** 2)  # (A, N)
    weight = kernel.sum(1)
    norm = kernel / np.maximum(weight[:, None], 1e-9)
    shapes = np.einsum("an,nkd->akd", norm, aligned)
    proto_tex = np.zeros((len(AGE_GRID), CANVAS, CANVAS, 3), np.float64)
    proto_det = np.zeros((len(AGE_GRID), CANVAS, CANVAS), np.float64)
    x = []
    face = _hull_mask(mean_shape, (CANVAS, CANVAS), feather=0) > 0
    for n, (sample, p) in enumerate(zip(used, points)):
        texture = relative(shape_free(sample.pixels(), p, mean_shape), face)
        detail = _detail(texture.mean(2), DETAIL_SIGMA)
        proto_tex += norm[:, n, None, None, None] * texture
        proto_det += norm[:, n, None, None] * detail
        x.append(_regression_input(texture))
        if progress:
            progress("textures", n + 1, len(points))
    proto_tex, proto_det = proto_tex.astype(np.float32), proto_det.astype(np.float32)
    # ages with (almost) no faces borrow the nearest well-supported prototype
    supported = weight >= 1.0
    if not supported.any():
        supported = weight >= weight.max()
    for a in np.flatnonzero(~supported):
        near = np.flatnonzero(supported)[np.argmin(np.abs(np.flatnonzero(supported) - a))]
        shapes[a], proto_tex[a], proto_det[a] = shapes[near], proto_tex[near], proto_det[near]
    x = np.stack(x)
    x_mean = x.mean(0)
    xc = x - x_mean
    lam = 10.0 * len(x)  # ridge: the texture has more numbers than most catalogs have faces
    coef = np.linalg.solve(xc.T @ xc + lam * np.eye(xc.shape[1]), xc.T @ (ages_arr - ages_arr.mean()))
    regression = np.append(coef, ages_arr.mean() - x_mean @ coef)
    key = hashlib.sha1(json.dumps(sorted(ages)).encode() + aligned.round(1).tobytes()).hexdigest()[:16]
    return AgePrototypes(mean_shape, shapes, proto_tex, proto_det, weight, regression, len(points), key)


def check_strength(strength: float) -> None:
    if not 0 < strength <= 3:
        raise InvalidInput(f"--age-strength must be above 0 and at most 3, got {strength}")


class PrototypeAger:
    """An AgeBackend: moves a face towards the prototype of the target age (see the module's docstring)."""

    name = "prototype"

    def __init__(self, prototypes: AgePrototypes, strength: float = DEFAULT_STRENGTH):
        check_strength(strength)
        self.prototypes = prototypes
        self.strength = strength
        self.last: dict = {}  # what the last transform did (estimated source age, ...), for lineage
        self.moved: tuple | None = None  # the face box and 5 landmarks after the last transform
        self._face = _hull_mask(prototypes.mean_shape, (CANVAS, CANVAS), feather=0) > 0

    def transform(self, rgb: np.ndarray, box, landmarks, target_age: int) -> np.ndarray:
        import cv2

        rgb = np.ascontiguousarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InvalidInput(f"the age backend takes RGB uint8 images, got shape {rgb.shape} {rgb.dtype}")
        proto = self.prototypes
        h, w = rgb.shape[:2]
        points = landmarks68(rgb, box)
        to_image = _similarity(proto.mean_shape, points)  # canvas -> this face
        own = relative(shape_free(rgb, points, proto.mean_shape), self._face)
        source_age = proto.estimate_age(own)
        s_src, t_src, d_src = proto.at(source_age)
        s_dst, t_dst, d_dst = proto.at(target_age)
        k = self.strength
        linear = to_image[:, :2]
        moved = points + (k * (s_dst - s_src)) @ linear.T
        ring = _ring(points)
        src_all, dst_all = np.vstack([points, ring]), np.vstack([moved, ring])
        lo = np.floor(ring.min(0)).astype(int)
        hi = np.ceil(ring.max(0)).astype(int) + 1
        region = (lo[0], lo[1], hi[0], hi[1])
        map_x, map_y, _ = warp_maps(src_all, dst_all, (h, w), region)
        warped = _remap(rgb.astype(np.float32), map_x, map_y)
        # the prototypes' colour and detail differences, from the canvas onto the moved face
        cx, cy, inside = warp_maps(proto.mean_shape, moved, (h, w), region)
        face_scale = float(np.sqrt(abs(np.linalg.det(linear))))
        colour = np.clip(cv2.GaussianBlur(t_dst, (0, 0), 1.5) / np.maximum(cv2.GaussianBlur(t_src, (0, 0), 1.5), 0.05),
                         *COLOUR_RATIO)
        ratio = np.clip((d_dst + 0.004) / (d_src + 0.004), *DETAIL_RATIO)
        colour_img = cv2.remap(colour, cx, cy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ratio_img = cv2.remap(ratio, cx, cy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = _hull_mask(moved, (h, w), feather=max(2.0, 6 * face_scale)) * inside
        sigma = max(0.8, DETAIL_SIGMA * face_scale)
        low = cv2.GaussianBlur(warped, (0, 0), sigma)
        gain = 1 + (ratio_img ** k - 1) * mask
        shade = 1 + (colour_img ** k - 1) * mask[..., None]
        out = (low + (warped - low) * gain[..., None]) * shade
        self.last = {"source_age_estimate": round(source_age, 1), "target_age": int(target_age),
                     "strength": k, "prototypes": proto.key}
        self.moved = _moved_geometry(box, landmarks, src_all, dst_all)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _moved_geometry(box, landmarks, src: np.ndarray, dst: np.ndarray) -> tuple | None:
    """Where a face box and its 5 detector landmarks went under the warp src -> dst (None without landmarks)."""
    from scipy.spatial import Delaunay

    if landmarks is None:
        return None
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    mesh = Delaunay(src)
    simplex = mesh.find_simplex(points)
    out = points.copy()
    for n, (q, t) in enumerate(zip(points, simplex)):
        if t >= 0:
            b = mesh.transform[t, :2] @ (q - mesh.transform[t, 2])
            out[n] = np.append(b, 1 - b.sum()) @ dst[mesh.simplices[t]]
    shift = (dst - src).mean(0)
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 + shift[0], y1 + shift[1], x2 + shift[0], y2 + shift[1]], out.tolist()


# ---------------------------------------------------------------- from a catalog


def catalog_faces(catalog, progress: Progress | None = None) -> list[FaceSample]:
    """Every usable real person's normal photo with its face box (from a crop variant, or detected now)."""
    from .generate import Geometry, read_rgb, sources

    donors = sources(catalog)
    geometry = Geometry(catalog)
    geometry.load_known([d.normal_id for d in donors])
    out = []
    for n, donor in enumerate(donors, 1):
        geo = geometry.cache.get(donor.normal_id)  # known from a crop variant: nothing to read now
        if geo is None:
            geo = geometry.of(donor.normal_id, read_rgb(donor.normal_path))
        if geo is not None:
            out.append(FaceSample(tuple(geo[0]), donor.age, path=donor.normal_path))
        if progress:
            progress("faces", n, len(donors))
    return out


def prototypes_file(catalog) -> Path:
    """Where the catalog's fitted prototypes are kept: keyed by the people and labels they learn from."""
    from sqlalchemy import select

    from ..catalog.models import Image, Profile
    from ..catalog.roots import work_root

    with catalog.session() as session:
        rows = session.execute(select(Profile.person_id, Profile.folder, Profile.age, Image.sha1)
                               .join(Image, (Image.profile_id == Profile.id) & (Image.kind == "normal"))
                               .where(Profile.origin == "original").order_by(Profile.id)).all()
        root = Path(work_root(catalog, session).path)
        session.commit()
    key = hashlib.sha1(json.dumps([VERSION] + [list(r) for r in rows]).encode()).hexdigest()[:16]
    return root / "models" / f"age-prototypes-{key}.npz"


def load(checkpoint: str | None = None, device: str = "cpu", catalog=None, strength: float = DEFAULT_STRENGTH,
         progress: Progress | None = None) -> PrototypeAger:
    """The prototype backend: from a saved .npz (checkpoint), else fitted on the catalog's real faces (and kept
    under the work root, refitted when the people or their labels change)."""
    check_strength(strength)
    if checkpoint:
        return PrototypeAger(AgePrototypes.load(Path(checkpoint)), strength)
    if catalog is None:
        raise InvalidInput("the prototype age backend learns from a catalog's faces: run it through maskkit, or pass "
                           "--age-checkpoint with a saved age-prototypes .npz")
    path = prototypes_file(catalog)
    if path.is_file():
        return PrototypeAger(AgePrototypes.load(path), strength)
    prototypes = fit(catalog_faces(catalog, progress), progress)
    prototypes.save(path)
    return PrototypeAger(prototypes, strength)
