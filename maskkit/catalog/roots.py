"""Data roots: the folders that stored image paths are relative to."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import or_, select

from ..errors import InvalidInput, NotFound
from .engine import Catalog
from .models import DataRoot, EvalImage, Image, Profile


def move_root(catalog: Catalog, name_or_path: str, new_path) -> tuple[str, str]:
    """Point the root named (or located at) `name_or_path` at `new_path`; checks a file is really there."""
    new = Path(new_path).expanduser().resolve()
    if not new.is_dir():
        raise InvalidInput(f"{new}: not a folder")
    with catalog.session() as session:
        old_abs = str(Path(name_or_path).expanduser().resolve())
        root = session.execute(
            select(DataRoot).where(or_(DataRoot.name == name_or_path, DataRoot.path == old_abs))
        ).scalars().first()
        if root is None:
            names = ", ".join(session.execute(select(DataRoot.name)).scalars()) or "none"
            raise NotFound(f"no data root named or located at {name_or_path!r} (roots: {names})")
        sample = session.execute(
            select(Image.path).join(Profile, Profile.id == Image.profile_id).where(Profile.root_id == root.id).limit(1)
        ).scalar() or session.execute(select(EvalImage.path).where(EvalImage.root_id == root.id).limit(1)).scalar()
        if sample and not (new / sample).is_file():
            raise NotFound(f"{new / sample} not found: {new} does not hold this root's images")
        old = root.path
        root.path = str(new)
        session.commit()
    return old, str(new)



WORK_ROOT = "work"


def default_work_path(catalog: Catalog) -> Path:
    """Where derived images go: $MASKKIT_DATA, else data/ beside a SQLite catalog, else ./data."""
    import os

    from sqlalchemy.engine import make_url

    if os.environ.get("MASKKIT_DATA"):
        return Path(os.environ["MASKKIT_DATA"]).expanduser().resolve()
    url = make_url(catalog.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent / "data"
    return Path("data").resolve()


def work_root(catalog: Catalog, session) -> DataRoot:
    """The catalog's own data root for files maskkit writes (variants, synthetic people), made on first use."""
    root = session.execute(select(DataRoot).where(DataRoot.name == WORK_ROOT)).scalars().first()
    if root is None:
        path = default_work_path(catalog)
        path.mkdir(parents=True, exist_ok=True)
        root = DataRoot(name=WORK_ROOT, path=str(path))
        session.add(root)
        session.flush()
    return root
