"""Small file helpers shared by the commands: never a half-written output, one way to read YAML."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MaskkitError


def save_image(image, out) -> Path:
    """Save a PIL image (format from the suffix) under a temporary name, then rename it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    image.save(tmp)
    tmp.replace(out)
    return out


def read_yaml_mapping(path, what: str) -> dict:
    """A YAML file that must hold a mapping; one-line errors naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MaskkitError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MaskkitError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MaskkitError(f"{path}: a {what} must be a mapping of keys")
    return data
