"""What makes a fine-tuning step fast on whatever device it runs: precision, memory layout, augmentation on
the device, compilation, and loader settings sized from the cores. Every path here runs on the CPU too
(that is how it is tested); on a GPU the same code only picks other values.

- Precision (`train.precision`): auto = bf16 autocast on a GPU that supports it, else fp16 with a
  GradScaler; fp32 on the CPU (its bf16 autocast works, `train.precision=bf16`, but is faster only on CPUs
  with bf16 units). Validation runs in the same precision as training.
- Memory layout (`train.channels_last`): auto = channels_last on CUDA for convolutional networks.
- Augmentation (`augment_geometry_batch`): the random resized crop and the flip as one affine warp of the
  whole batch (`grid_sample`), on the batch's device; random numbers from a seeded CPU generator, so an
  epoch repeats exactly on any device.
- `train.compile`: torch.compile on the model (off by default).
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import InvalidInput

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LAYOUTS = ("auto", "on", "off")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InvalidInput("train.precision=bf16 but this GPU has no bf16: use fp16 or auto")
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "auto":
        return None  # CPU: fp32 unless asked (bf16 autocast is slower without bf16 units)
    if precision == "fp16":
        raise InvalidInput("train.precision=fp16 needs CUDA (loss scaling); on the CPU use bf16 or fp32")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for a step (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fp32(out):
    """A model's output (a tensor or a dict of head tensors) in fp32, for the loss and the probabilities."""
    if isinstance(out, dict):
        return {k: fp32(v) for k, v in out.items()}
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling: on for fp16 only (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu",
                                enabled=dtype is torch.float16 and device.type == "cuda")


def channels_last(setting: str, device: torch.device, model: torch.nn.Module) -> bool:
    """Whether to use the channels_last layout: auto = on CUDA for networks with convolutions."""
    if setting not in LAYOUTS:
        raise InvalidInput(f"train.channels_last must be one of {', '.join(LAYOUTS)}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def to_device(x: torch.Tensor, device: torch.device, layout_last: bool) -> torch.Tensor:
    """A CPU batch onto the device without waiting (pinned memory makes the copy asynchronous)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if layout_last and x.dim() == 4 else x


def compile_model(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """torch.compile when asked (the eager model is kept for checkpoints, probabilities and export)."""
    if not enabled:
        return model
    if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2
        raise InvalidInput("train.compile=true needs torch 2 or newer")
    return torch.compile(model)


def loader_workers(requested: int) -> int:
    """DataLoader workers: as asked, but never more than the cores this process may use less one (the main
    process feeds the device)."""
    from ..cpus import usable_cores

    return max(0, min(requested, usable_cores() - 1)) if requested else 0


def augment_geometry_batch(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """N x C x H x W (any dtype, any device) -> float N x C x H x W: a random resized crop (area fraction
    crop_scale_min..1, aspect 0.9..1.1) and a horizontal flip (probability hflip), per image, as one affine
    warp of the batch on its own device. Random numbers come from `generator` (CPU), so the same seed gives
    the same batch on every device."""
    n = x.shape[0]
    x = x.float()
    if n == 0 or (cfg["crop_scale_min"] >= 1 and cfg["hflip"] <= 0):
        return x
    area = torch.empty(n).uniform_(cfg["crop_scale_min"], 1.0, generator=generator) if cfg["crop_scale_min"] < 1 \
        else torch.ones(n)
    ratio = torch.empty(n).uniform_(0.9, 1.1, generator=generator)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)  # crop centre, in [-1, 1] coordinates
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=generator) < cfg["hflip"], -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    theta = theta.to(x.device)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
