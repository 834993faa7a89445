"""The frozen backbone on ONNX Runtime for long feature passes on the CPU: the same weights, exported once per
pass, about 3x the images/s of eager PyTorch on a CPU core for EfficientNet-Lite0 (bench/features.py), and
the same features within 1e-5. GPUs, short passes, models that do not export, a missing onnxruntime or
MASKKIT_FEATURE_RUNTIME=torch keep PyTorch."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch

ENV_VAR = "MASKKIT_FEATURE_RUNTIME"
MIN_IMAGES = 128  # below this the export (seconds) costs more than it saves


def wanted(device: torch.device, images: int) -> bool:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower()
    if choice not in ("auto", "onnxruntime", "torch"):
        from ..errors import InvalidInput

        raise InvalidInput(f"{ENV_VAR} must be auto, onnxruntime or torch, got {choice!r}")
    if choice == "torch" or device.type != "cpu":
        return False
    return choice == "onnxruntime" or images >= MIN_IMAGES


class OnnxBackbone:
    """`net` (eval mode, pooled features out) exported to ONNX in memory and run by onnxruntime with `threads`
    intra-op threads (no spinning: the face prior's worker processes share the cores)."""

    def __init__(self, net: torch.nn.Module, image_size: int, threads: int):
        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(2, 3, image_size, image_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), buffer, input_names=["image"], output_names=["features"],
                              dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        from ..cpus import onnx_options

        self.session = ort.InferenceSession(buffer.getvalue(), onnx_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.threads = threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]


def make(net: torch.nn.Module, image_size: int, threads: int) -> OnnxBackbone | None:
    """The ONNX Runtime backbone, or None where it cannot be had (no onnxruntime, a model that does not export:
    the pass runs on PyTorch as before)."""
    try:
        return OnnxBackbone(net, image_size, threads)
    except Exception:  # noqa: BLE001 - any export or load failure means: use PyTorch
        return None
