"""`maskkit ingest`: read a dataset in the competition layout into the catalog.

Train: TRAIN_DIR/train.csv (id,gender,race,age,path) + TRAIN_DIR/images/<folder>/<kind>.<ext>.
Eval:  EVAL_DIR/info.csv (ImageID,ans) + EVAL_DIR/images/<ImageID>.

Every file is read once (hash + damage check) the first time; on re-runs files whose size and
mtime are unchanged are skipped without being opened. All catalog writes of one ingest happen in
one transaction, after every input has been validated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from sqlalchemy import func, insert, select, update

from .. import labels
from ..errors import Conflict, InvalidInput, MaskkitError, NotFound
from ..progress import Progress
from .engine import Catalog
from .imagefiles import JUNK_NAMES, FileFacts, inspect_file, is_junk
from .models import DataRoot, EvalImage, Image, IngestRun, Profile, utcnow

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
FOLDER_PATTERN = re.compile(r"^(?P<id>.+?)_(?P<gender>male|female)_(?P<race>.+)_(?P<age>\d+)$", re.IGNORECASE)
KIND_BY_STEM = {kind: kind for kind in labels.IMAGE_KINDS}
EXT_PREFERENCE = {".jpg": 0, ".jpeg": 1, ".png": 2}



@dataclass
class TrainRow:
    line: int
    person_id: str
    gender: str
    race: str
    age: int
    folder: str


@dataclass
class Mismatch:
    folder: str
    field: str
    csv_value: str
    folder_value: str


@dataclass
class IngestReport:
    """What one ingest found and did. Lists name folders/files relative to the data root."""

    kind: str
    root: str
    profiles_added: int = 0
    profiles_known: int = 0
    images_added: int = 0
    images_unchanged: int = 0
    images_touched: int = 0  # stat changed, content identical
    images_changed: list[str] = field(default_factory=list)  # content changed since last ingest
    images_missing: list[str] = field(default_factory=list)  # in the catalog, gone from disk
    damaged: list[str] = field(default_factory=list)  # damaged files seen in this ingest
    damage_reasons: dict[str, str] = field(default_factory=dict)
    junk_files: int = 0
    junk_examples: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)  # image-like files of no known kind
    duplicate_kinds: list[str] = field(default_factory=list)  # a kind present twice; the other is ignored
    missing_kinds: dict[str, list[str]] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)  # folder name vs csv row
    shared_ids: dict[str, list[str]] = field(default_factory=dict)  # one id, several folders
    missing_folders: list[str] = field(default_factory=list)  # csv rows without a folder
    unlisted_folders: list[str] = field(default_factory=list)  # folders without a csv row
    csv_label_changes: list[str] = field(default_factory=list)  # csv differs from recorded originals
    # (folder, other root:folder, n, "identical" | "similar"): people who look like another catalogued person
    duplicate_people: list[tuple[str, str, int, str]] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)  # person folders that could not be listed
    eval_rows: int = 0
    eval_added: int = 0
    eval_unchanged: int = 0
    eval_missing_files: list[str] = field(default_factory=list)

    @property
    def added(self) -> int:
        return self.profiles_added + self.images_added + self.eval_added

    @property
    def nothing_new(self) -> bool:
        return self.added == 0 and not self.images_changed and self.images_touched == 0


# ---------------------------------------------------------------- reading the csv files


def _read_csv(path: Path, expected: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    from ..files import read_csv

    header, body = read_csv(path, "csv file")
    missing = [c for c in expected if c not in header]
    if missing:
        raise InvalidInput(f"{path}: wrong header {','.join(header)!r}: missing column(s) {', '.join(missing)} "
                           f"(expected {','.join(expected)})")
    rows = []
    for line, values in body:
        if len(values) != len(header):
            raise InvalidInput(f"{path}: row {line}: {len(values)} fields, header has {len(header)}")
        rows.append((line, {h: v.strip() for h, v in zip(header, values)}))
    return rows


def read_train_csv(path: Path) -> list[TrainRow]:
    """Validated rows of train.csv; the first bad field raises a one-line MaskkitError."""
    out = []
    rows = _read_csv(path, TRAIN_COLUMNS)
    if not rows:
        raise InvalidInput(f"{path}: no rows, only a header (train.csv lists the people, one per row)")
    for line, row in rows:
        def bad(column: str, why: str) -> MaskkitError:
            return InvalidInput(f"{path}: row {line}, field '{column}': {row[column]!r} {why}")

        if not row["id"]:
            raise bad("id", "is empty")
        gender = row["gender"].lower()
        if gender not in labels.GENDERS:
            raise bad("gender", f"is not one of {', '.join(labels.GENDERS)}")
        try:
            age = int(row["age"])
        except ValueError:
            raise bad("age", "is not a whole number") from None
        if not labels.MIN_AGE <= age <= labels.MAX_AGE:
            raise bad("age", f"is outside {labels.MIN_AGE}..{labels.MAX_AGE}")
        if not row["path"] or "/" in row["path"] or "\\" in row["path"] or row["path"] in (".", ".."):
            raise bad("path", "is not a folder name")
        out.append(TrainRow(line, row["id"], gender, row["race"], age, row["path"]))
    seen: dict[str, int] = {}
    for r in out:
        if r.folder in seen:
            raise InvalidInput(f"{path}: row {r.line}, field 'path': folder {r.folder!r} already used in row {seen[r.folder]}")
        seen[r.folder] = r.line
    return out


def parse_folder_name(folder: str) -> dict[str, str] | None:
    match = FOLDER_PATTERN.match(folder)
    return {k: v for k, v in match.groupdict().items()} if match else None


# ---------------------------------------------------------------- scanning folders


@dataclass
class FolderScan:
    files: dict[str, tuple[str, int, int]]  # kind -> (file name, size, mtime_ns) of the chosen file
    junk: list[str]
    extra: list[str]
    duplicates: list[str]
    unreadable: str | None = None  # why the folder could not be listed


def scan_person_folder(path: str | Path) -> FolderScan:
    """Classify one person's files (one directory read; sizes and mtimes from the same scan). An unreadable
    folder, symlink loops and dangling links are reported, never raised."""
    files: dict[str, tuple[str, int, int]] = {}
    junk, extra, duplicates = [], [], []
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as exc:
        return FolderScan(files, [], [], [], unreadable=exc.strerror or type(exc).__name__)
    for entry in entries:
        name = entry.name
        try:
            plain_file = entry.is_file()
            st = entry.stat() if plain_file else None
        except OSError:  # a symlink loop, a dangling link, a file gone meanwhile
            plain_file, st = False, None
        if name[0] == "." or name.lower() in JUNK_NAMES or not plain_file:
            junk.append(name)
            continue
        stem, dot, ext = name.rpartition(".")
        ext = f".{ext.lower()}"
        if not dot or ext not in EXT_PREFERENCE:
            junk.append(name)
            continue
        kind = KIND_BY_STEM.get(stem) or KIND_BY_STEM.get(stem.lower())
        if kind is None:
            extra.append(name)
            continue
        found = (name, st.st_size, st.st_mtime_ns)
        if kind in files:  # e.g. mask1.jpg and mask1.png: keep by extension preference, then name
            keep, drop = sorted((files[kind], found),
                                key=lambda f: (EXT_PREFERENCE["." + f[0].rpartition(".")[2].lower()], f[0]))
            files[kind] = keep
            duplicates.append(drop[0])
        else:
            files[kind] = found
    junk.sort()
    extra.sort()
    return FolderScan(files, junk, extra, sorted(duplicates))


def _rescan_known(path: str, known: dict[str, tuple], notes: dict | None) -> FolderScan | None:
    """A folder whose listing is unchanged: stat its known files only. None when something is off."""
    files = {}
    prefix = path + os.sep  # plain concatenation: os.path.join costs more than the stat at 19,000 files
    for kind, row in known.items():
        name = row[1].rsplit("/", 1)[-1]
        try:
            st = os.stat(prefix + name)
        except OSError:
            return None
        files[kind] = (name, st.st_size, st.st_mtime_ns)
    notes = notes or {}
    return FolderScan(files, list(notes.get("junk", [])), list(notes.get("extra", [])), list(notes.get("duplicates", [])))


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # symlink loop
        return False


def _stat_key(entry: os.DirEntry) -> tuple[int, int]:
    st = entry.stat()
    return st.st_size, st.st_mtime_ns


def _pool(workers: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def _inspect_chunk(args: tuple[list[str], bool]) -> list[FileFacts]:
    paths, full_decode = args
    return [inspect_file(p, full_decode=full_decode) for p in paths]


PARALLEL_MIN_FILES = 2000  # below this, a worker pool costs more than it saves
CHUNK = 500


def _inspect_all(paths: list[Path], full_decode: bool, progress: Progress | None, phase: str,
                 workers: int | None) -> list[FileFacts]:
    """Hash and check files; large batches are split over worker processes (one per core)."""
    if not paths:
        return []
    workers = workers or os.cpu_count() or 1
    chunks = [([str(p) for p in paths[i:i + CHUNK]], full_decode) for i in range(0, len(paths), CHUNK)]
    results: list[FileFacts] = []

    def collect(facts_iter):
        for facts in facts_iter:
            results.extend(facts)
            if progress:
                progress(phase, len(results), len(paths))

    if workers > 1 and len(paths) >= PARALLEL_MIN_FILES:
        with _pool(workers) as pool:
            collect(pool.map(_inspect_chunk, chunks))
    else:
        collect(map(_inspect_chunk, chunks))
    return results


# ---------------------------------------------------------------- data roots


def _root_for(session, directory: Path, kind: str) -> DataRoot:
    """The data root for an absolute folder: existing one with this path, or a new one."""
    path = str(directory)
    root = session.execute(select(DataRoot).where(DataRoot.path == path)).scalars().first()
    if root:
        return root
    base = f"{kind}:{directory.parent.name}/{directory.name}" if directory.parent.name else f"{kind}:{directory.name}"
    name, n = base, 1
    while session.execute(select(DataRoot.id).where(DataRoot.name == name)).first():
        n += 1
        name = f"{base}#{n}"
    root = DataRoot(name=name, path=path)
    session.add(root)
    session.flush()
    return root


def root_path(session, root_id: int) -> Path:
    return Path(session.get(DataRoot, root_id).path)


# ---------------------------------------------------------------- train


def ingest_train(
    catalog: Catalog,
    train_dir: str | os.PathLike,
    *,
    prefer: Literal["csv", "folder"] = "csv",
    full_decode: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    train_dir = Path(train_dir).expanduser().resolve()
    if not train_dir.is_dir():
        raise NotFound(f"{train_dir}: " + ("not a folder" if train_dir.exists() else "folder not found"))
    csv_path = train_dir / "train.csv"
    images_dir = train_dir / "images"
    rows = read_train_csv(csv_path)
    if not images_dir.is_dir():
        raise NotFound(f"{images_dir}: folder not found (expected images/<id>_<gender>_<race>_<age>/)")
    report = IngestReport(kind="train", root=str(train_dir))

    on_disk = {e.name for e in os.scandir(images_dir) if e.is_dir() and not is_junk(e.name)}
    listed = {r.folder for r in rows}
    report.unlisted_folders = sorted(on_disk - listed)
    by_id: dict[str, list[str]] = {}
    for r in rows:
        by_id.setdefault(r.person_id, []).append(r.folder)
    report.shared_ids = {k: v for k, v in sorted(by_id.items()) if len(v) > 1}

    # labels: csv row vs folder name
    resolved: list[TrainRow] = []
    for r in rows:
        if r.folder not in on_disk:
            report.missing_folders.append(r.folder)
            continue
        parsed = parse_folder_name(r.folder)
        if parsed:
            folder_values = {"id": parsed["id"], "gender": parsed["gender"].lower(), "race": parsed["race"],
                             "age": parsed["age"]}
            csv_values = {"id": r.person_id, "gender": r.gender, "race": r.race, "age": str(r.age)}
            for key in ("id", "gender", "race", "age"):
                if folder_values[key] != csv_values[key]:
                    report.mismatches.append(Mismatch(r.folder, key, csv_values[key], folder_values[key]))
            if prefer == "folder":
                r = TrainRow(r.line, parsed["id"], parsed["gender"].lower(), parsed["race"], int(parsed["age"]), r.folder)
        resolved.append(r)

    # phase A: what the catalog knows (a short transaction; a new data root is committed at once)
    with catalog.session() as session:
        root = _root_for(session, train_dir, "train")
        session.commit()
        known_profiles = {
            row.folder: row for row in session.connection().execute(
                select(Profile.id, Profile.folder, Profile.orig_gender, Profile.orig_race, Profile.orig_age,
                       Profile.dir_mtime_ns, Profile.scan_notes).where(Profile.root_id == root.id))
        }
        # (folder, kind) -> (image id, path, size, mtime_ns, sha1, width); a plain DB-API cursor: at 19,000 rows
        # SQLAlchemy's row objects cost more than the query
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cursor = conn.connection.cursor()
        cursor.execute("SELECT p.folder, i.kind, i.id, i.path, i.size, i.mtime_ns, i.sha1, i.width FROM image i "
                       f"JOIN profile p ON p.id = i.profile_id WHERE p.root_id = {mark}", (root.id,))
        known_images: dict[tuple[str, str], tuple] = {(row[0], row[1]): row[2:] for row in cursor.fetchall()}
        cursor.close()
    root_id = root.id
    # phase B: the disk (no transaction open: relabels and reviews write meanwhile without waiting)
    # what is on disk per person: a folder whose mtime is what it was at the last full scan holds the same
    # names (adding, removing or renaming a file changes it), so only its known files are stat-ed again
    by_folder: dict[str, dict[str, tuple]] = {}
    for (folder, kind), row in known_images.items():
        by_folder.setdefault(folder, {})[kind] = row
    base = str(images_dir)
    scans: dict[str, FolderScan] = {}
    folder_state: dict[str, tuple[int, dict | None]] = {}  # folder -> (mtime, notes) after a full scan
    for r in resolved:
        path = os.path.join(base, r.folder)
        mtime = os.stat(path).st_mtime_ns
        known = known_profiles.get(r.folder)
        scan = None
        if known is not None and known.dir_mtime_ns == mtime and r.folder in by_folder:
            scan = _rescan_known(path, by_folder[r.folder], known.scan_notes)
        if scan is None:
            scan = scan_person_folder(path)
            notes = {k: v for k, v in (("junk", scan.junk), ("extra", scan.extra),
                                       ("duplicates", scan.duplicates)) if v} or None
            folder_state[r.folder] = (mtime, notes)
        scans[r.folder] = scan
    if progress:
        progress("scan", len(resolved), len(resolved))
    for r in resolved:
        scan = scans[r.folder]
        report.junk_files += len(scan.junk)
        report.junk_examples.extend(f"{r.folder}/{n}" for n in scan.junk[: max(0, 5 - len(report.junk_examples))])
        report.extra_files.extend(f"{r.folder}/{n}" for n in scan.extra)
        report.duplicate_kinds.extend(f"{r.folder}/{n}" for n in scan.duplicates)
        if scan.unreadable:
            report.unreadable_folders.append(f"{r.folder}: {scan.unreadable}")
        missing = [k for k in labels.IMAGE_KINDS if k not in scan.files]
        if missing:
            report.missing_kinds[r.folder] = missing

    # profiles
    new_profiles = []
    for r in resolved:
        known = known_profiles.get(r.folder)
        if known is None:
            new_profiles.append(r)
            continue
        report.profiles_known += 1
        if (known.orig_gender, known.orig_race, known.orig_age) != (r.gender, r.race, r.age):
            report.csv_label_changes.append(r.folder)

    # images: which ones must be read (by folder: new people have no id yet)
    todo: list[tuple[str, str, str, object]] = []  # (folder, kind, relpath, known row or None)
    seen_keys = set()
    for r in resolved:
        for kind, (name, size, mtime_ns) in scans[r.folder].files.items():
            rel = f"images/{r.folder}/{name}"
            key = (r.folder, kind)
            seen_keys.add(key)
            known = known_images.get(key)
            if known is not None and known[1] == rel and known[2] == size and known[3] == mtime_ns \
                    and known[5] is not None:
                report.images_unchanged += 1
                continue
            todo.append((r.folder, kind, rel, known))
    report.images_missing = sorted(row[1] for key, row in known_images.items() if key not in seen_keys)
    facts = _inspect_all([train_dir / rel for _, _, rel, _ in todo], full_decode, progress, "read", workers)

    # phase C: everything learnt, written in one short transaction
    with catalog.session() as session:
        run = IngestRun(root_id=root_id, kind="train")
        session.add(run)
        now = utcnow()
        if new_profiles:
            session.execute(insert(Profile), [
                dict(root_id=root_id, person_id=r.person_id, folder=r.folder, gender=r.gender, race=r.race, age=r.age,
                     orig_gender=r.gender, orig_race=r.race, orig_age=r.age, origin="original", csv_row=r.line,
                     dir_mtime_ns=folder_state[r.folder][0], scan_notes=folder_state.pop(r.folder)[1], created_at=now)
                for r in new_profiles
            ])
        profile_ids = dict(session.connection().execute(select(Profile.folder, Profile.id).where(Profile.root_id == root_id)).all())
        report.profiles_added = len(new_profiles)
        if folder_state:
            from sqlalchemy import bindparam

            session.connection().execute(
                update(Profile).where(Profile.id == bindparam("b_id")).values(
                    dir_mtime_ns=bindparam("b_mtime"), scan_notes=bindparam("b_notes")),
                [{"b_id": profile_ids[f], "b_mtime": m, "b_notes": n} for f, (m, n) in folder_state.items()])

        inserts, updates = [], []
        for (folder, kind, rel, known), f in zip(todo, facts):
            profile_id = profile_ids[folder]
            if f.damaged:
                report.damaged.append(rel)
                report.damage_reasons[rel] = f.damage_reason or ""
            values = dict(path=rel, size=f.size, mtime_ns=f.mtime_ns, sha1=f.sha1, width=f.width, height=f.height,
                          damaged=f.damaged, damage_reason=f.damage_reason)
            if known is None:
                mask = labels.KIND_MASK[kind]
                inserts.append(dict(profile_id=profile_id, kind=kind, mask=mask, orig_mask=mask, origin="original",
                                    created_at=now, **values))
            else:
                if known[4] != f.sha1:
                    report.images_changed.append(rel)
                else:
                    report.images_touched += 1
                updates.append(dict(b_id=known[0], **values))
        if inserts:
            session.execute(insert(Image), inserts)
        if updates:
            from sqlalchemy import bindparam

            stmt = update(Image).where(Image.id == bindparam("b_id")).values(
                {k: bindparam(k) for k in updates[0] if k != "b_id"}
            )
            session.connection().execute(stmt, updates)
        report.images_added = len(inserts)
        session.flush()
        if inserts or updates:  # new content: is any of it a person already catalogued?
            report.duplicate_people = _duplicate_people(session, root_id)
        run.finished_at = utcnow()
        run.summary = summary_dict(report)
        _commit_or_conflict(session, train_dir)
    if report.images_added:
        catalog.optimize()
    return report


# ---------------------------------------------------------------- eval


def ingest_eval(
    catalog: Catalog,
    eval_dir: str | os.PathLike,
    *,
    full_decode: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    eval_dir = Path(eval_dir).expanduser().resolve()
    if not eval_dir.is_dir():
        raise NotFound(f"{eval_dir}: " + ("not a folder" if eval_dir.exists() else "folder not found"))
    csv_path = eval_dir / "info.csv"
    rows = _read_csv(csv_path, EVAL_COLUMNS)
    if not rows:
        raise InvalidInput(f"{csv_path}: no rows, only a header (info.csv lists the eval images, one per row)")
    names: dict[str, int] = {}
    for line, row in rows:
        name = row["ImageID"]
        if not name or "/" in name or "\\" in name:
            raise InvalidInput(f"{csv_path}: row {line}, field 'ImageID': {name!r} is not a file name")
        if name in names:
            raise InvalidInput(f"{csv_path}: row {line}, field 'ImageID': {name!r} already listed in row {names[name]}")
        names[name] = line
    images_dir = eval_dir / "images"
    if not images_dir.is_dir():
        raise NotFound(f"{images_dir}: folder not found")
    report = IngestReport(kind="eval", root=str(eval_dir), eval_rows=len(rows))
    entries = {e.name: e for e in os.scandir(images_dir) if _is_file(e)}
    report.junk_files = sum(1 for n in entries if is_junk(n))

    with catalog.session() as session:  # phase A: what is known (short)
        root = _root_for(session, eval_dir, "eval")
        session.commit()
        root_id = root.id
        known = {
            row.image_name: row
            for row in session.execute(
                select(EvalImage.id, EvalImage.image_name, EvalImage.position, EvalImage.size, EvalImage.mtime_ns,
                       EvalImage.sha1, EvalImage.width).where(EvalImage.root_id == root_id)
            )
        }
    # phase B: the disk, no transaction open
    todo = []
    for position, (line, row) in enumerate(rows):
        name = row["ImageID"]
        entry = entries.get(name)
        if entry is None:
            report.eval_missing_files.append(name)
            continue
        k = known.get(name)
        if k is not None and (k.size, k.mtime_ns) == _stat_key(entry) and k.position == position \
                and k.width is not None:
            report.eval_unchanged += 1
            continue
        todo.append((position, name, k))
    facts = _inspect_all([images_dir / name for _, name, _ in todo], full_decode, progress, "read", workers)
    with catalog.session() as session:  # phase C: one short write
        run = IngestRun(root_id=root_id, kind="eval")
        session.add(run)
        now = utcnow()
        inserts = []
        for (position, name, k), f in zip(todo, facts):
            rel = f"images/{name}"
            if f.damaged:
                report.damaged.append(rel)
                report.damage_reasons[rel] = f.damage_reason or ""
            values = dict(position=position, path=rel, size=f.size, mtime_ns=f.mtime_ns, sha1=f.sha1, width=f.width,
                          height=f.height, damaged=f.damaged, damage_reason=f.damage_reason)
            if k is None:
                inserts.append(dict(root_id=root_id, image_name=name, created_at=now, **values))
            else:
                if k.sha1 != f.sha1:
                    report.images_changed.append(rel)
                else:
                    report.images_touched += 1
                session.execute(update(EvalImage).where(EvalImage.id == k.id).values(**values))
        if inserts:
            session.execute(insert(EvalImage), inserts)
        report.eval_added = len(inserts)
        run.finished_at = utcnow()
        run.summary = summary_dict(report)
        _commit_or_conflict(session, eval_dir)
    return report


def _duplicate_people(session, root_id: int) -> list[tuple[str, str, int, str]]:
    """(this root's folder, the other person's root:folder, n, how) for every person of this data root who
    looks like another catalogued person: "identical" (n photos byte-identical: a second copy of a dataset)
    or "similar" (normal photos n bits apart in their perceptual hashes: a re-saved copy)."""
    from sqlalchemy.orm import aliased

    a, b = aliased(Image), aliased(Image)
    pa, pb = aliased(Profile), aliased(Profile)
    rows = session.connection().execute(
        select(pa.folder, DataRoot.name, pb.folder, func.count())
        .select_from(a).join(b, (a.sha1 == b.sha1) & (a.profile_id != b.profile_id))
        .join(pa, pa.id == a.profile_id).join(pb, pb.id == b.profile_id).join(DataRoot, DataRoot.id == pb.root_id)
        .where(pa.root_id == root_id, a.damaged.is_(False), b.damaged.is_(False))
        .group_by(pa.folder, DataRoot.name, pb.folder).order_by(pa.folder)).all()
    out = [(folder, f"{root}:{other}", int(n), "identical") for folder, root, other, n in rows]
    # near-identical normal photos (re-saved copies), once other people are catalogued (a first ingest skips this)
    others = session.connection().execute(select(func.count()).select_from(Profile).where(
        Profile.root_id != root_id, Profile.origin == "original")).scalar()
    if others:
        from .similar import near_pairs, normal_hashes

        hashes = normal_hashes(session)
        info = {pid: (folder, name, rid) for pid, folder, name, rid in session.connection().execute(
            select(Profile.id, Profile.folder, DataRoot.name, Profile.root_id).join(DataRoot, DataRoot.id == Profile.root_id)
            .where(Profile.id.in_(list(hashes))))}
        exact = {(folder, other) for folder, other, _, _ in out}
        for a, b, bits in near_pairs(hashes):
            for mine, theirs in ((a, b), (b, a)):
                if info[mine][2] == root_id and (info[mine][0], f"{info[theirs][1]}:{info[theirs][0]}") not in exact:
                    out.append((info[mine][0], f"{info[theirs][1]}:{info[theirs][0]}", bits, "similar"))
    return sorted(out)


def _commit_or_conflict(session, folder: Path) -> None:
    """Commit; another ingest of the same folder that committed in between is a clean conflict."""
    from sqlalchemy.exc import IntegrityError

    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"{folder} was ingested by another process meanwhile: run the same command again") from None


def summary_dict(report: IngestReport) -> dict:
    """A JSON-able summary of a report (what the ingest_run row keeps)."""
    out = {}
    for key, value in report.__dict__.items():
        if isinstance(value, list):
            out[key] = [v.__dict__ if isinstance(v, Mismatch) else v for v in value][:1000]
        else:
            out[key] = value
    return out


def iter_problems(report: IngestReport) -> Iterable[str]:
    """One line per thing in the data a user should know about."""
    for m in report.mismatches:
        yield f"folder/csv disagree: {m.folder}: {m.field} is {m.csv_value!r} in train.csv, {m.folder_value!r} in the folder name"
    for pid, folders in report.shared_ids.items():
        yield f"id {pid} is used by {len(folders)} folders: {', '.join(folders)} (kept as separate profiles)"
    for folder in report.missing_folders:
        yield f"train.csv lists {folder} but images/{folder} does not exist (skipped)"
    for folder in report.unlisted_folders:
        yield f"images/{folder} has no row in train.csv (skipped)"
    for folder, kinds in report.missing_kinds.items():
        yield f"{folder}: missing {', '.join(kinds)}"
    for name in report.extra_files:
        yield f"{name}: not a known image kind (ignored)"
    for name in report.duplicate_kinds:
        yield f"{name}: same kind as another file in the folder (ignored)"
    for rel in report.damaged:
        yield f"damaged: {rel}: {report.damage_reasons.get(rel, '')} (recorded, never used for training)"
    for rel in report.images_changed:
        yield f"changed since last ingest: {rel}"
    for rel in report.images_missing:
        yield f"gone from disk since last ingest: {rel}"
    for folder in report.csv_label_changes:
        yield f"{folder}: train.csv labels differ from the recorded originals (not applied; use `maskkit relabel`)"
    for line in report.unreadable_folders:
        yield f"cannot read images/{line} (skipped; fix its permissions and ingest again)"
    for folder, other, n, how in report.duplicate_people:
        what = f"{n} photo(s) byte-identical to {other}'s" if how == "identical" else \
            f"normal photo near-identical to {other}'s ({n} bits apart)"
        yield f"{folder}: {what}: the same person twice? (splits keep them in one fold; `maskkit audit` can mark one bad)"
    for name in report.eval_missing_files:
        yield f"eval image listed in info.csv but missing: images/{name}"
