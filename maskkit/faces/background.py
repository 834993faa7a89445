"""Background removal with rembg: one session for all images, the background filled with a colour."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, MaskkitError

MODEL_FILES = {"u2net": "u2net.onnx", "u2netp": "u2netp.onnx", "u2net_human_seg": "u2net_human_seg.onnx",
               "silueta": "silueta.onnx", "isnet-general-use": "isnet-general-use.onnx"}


@dataclass(frozen=True)
class RembgParams:
    model: str = "u2netp"
    fill: tuple[int, int, int] = (0, 0, 0)

    def validate(self) -> "RembgParams":
        if len(self.fill) != 3 or not all(0 <= c <= 255 for c in self.fill):
            raise InvalidInput(f"background fill {self.fill} must be three numbers 0..255")
        return self


def model_home() -> Path:
    return Path(os.environ.get("U2NET_HOME") or Path(os.environ.get("XDG_DATA_HOME", "~")).expanduser() / ".u2net")


class BackgroundRemover:
    """rembg with one reused session. Without the model file and without internet: a one-line error
    saying where to put it."""

    def __init__(self, params: RembgParams, device: str = "cpu", threads: int | None = None):
        """`threads`: onnxruntime's compute threads on the CPU (default: the free cores, maskkit/cpus.py); its
        own default, every core with spinning idle threads, starves whatever else runs beside it."""
        self.params = params.validate()
        try:
            from rembg import new_session
        except ImportError as exc:  # onnxruntime missing
            raise MaskkitError(f"rembg cannot be imported ({exc}); install it with: pip install 'rembg[cpu]'") from None
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else \
            ["CPUExecutionProvider"]
        filename = MODEL_FILES.get(params.model, f"{params.model}.onnx")
        from ..cpus import free_cores, onnx_options

        options = onnx_options(threads or free_cores()) if not device.startswith("cuda") else None
        try:
            self.session = new_session(params.model, providers=providers, sess_opts=options)
        except ValueError as exc:
            raise InvalidInput(f"unknown rembg model {params.model!r}: {exc}") from None
        except Exception as exc:  # download failed: offline, blocked, wrong checksum
            raise MaskkitError(
                f"rembg model {params.model!r} is not in {model_home()} and could not be downloaded "
                f"({type(exc).__name__}); put {filename} there or point U2NET_HOME at a folder holding it"
            ) from None

    def remove(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 in, RGB uint8 out with the background replaced by the fill colour."""
        from PIL import Image

        mask = np.asarray(self.session.predict(Image.fromarray(rgb))[0], dtype=np.float32)[..., None] / 255.0
        fill = np.array(self.params.fill, dtype=np.float32)
        return (rgb.astype(np.float32) * mask + fill * (1 - mask) + 0.5).astype(np.uint8)
