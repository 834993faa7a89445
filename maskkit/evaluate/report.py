"""`maskkit eval` and `maskkit ensemble`: metrics of a run or ensemble on its validation people (or a
whole view), confusion matrix, worst confusions with example images, Grad-CAM sheets; recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Evaluation, Split, View, utcnow
from ..errors import Conflict, InvalidInput, NotFound
from ..train.metrics import evaluate
from .predict import Source, load_model, combine, decide, predict_paths, resolve


@dataclass
class EnsembleResult:
    name: str
    on: str | None  # the validation images it was scored on (None: its runs share none)
    images: int
    metrics: dict | None


@dataclass
class EvalResult:
    source: str
    on: str
    images: int
    metrics: dict
    confusion: list
    worst: list
    confusion_png: str
    probs: "np.ndarray"
    eval_set: "EvalSet"

    def public(self) -> dict:
        """What --json prints."""
        return {k: getattr(self, k) for k in ("source", "on", "images", "metrics", "confusion", "worst", "confusion_png")}


class NoSharedValidation(Conflict):
    """The runs of an ensemble validated on disjoint people (k-fold members): no common set to score on."""


@dataclass
class EvalSet:
    image_ids: list[int]
    paths: list[str]
    labels: np.ndarray
    description: str


def _run_val_set(catalog: Catalog, run) -> EvalSet:
    from ..train.config import complete, validate
    from ..train.job import prepare

    with catalog.session() as session:
        view = session.get(View, run.view_id)
        split = session.get(Split, run.split_id)
    if view is None or split is None:
        raise NotFound(f"run {run.name}: its view or split is gone; evaluate it on a view (--view VIEW)", what="split")
    job = prepare(catalog, view.name, split.name, run.fold, validate(complete(dict(run.config))), make_split=False)
    rows = job.val_rows
    return EvalSet([job.samples[r].image_id for r in rows], [job.samples[r].path for r in rows],
                   np.array([job.samples[r].label for r in rows]), f"validation fold {run.fold} of {view.name}")


def eval_set(catalog: Catalog, source: Source, view: str | None = None) -> EvalSet:
    """A view's images, or the validation images every run of the source shares."""
    if view:
        from ..train.data import view_samples

        samples, _ = view_samples(catalog, view)
        return EvalSet([s.image_id for s in samples], [s.path for s in samples],
                       np.array([s.label for s in samples]), f"view {view}")
    sets = [_run_val_set(catalog, run) for run in source.runs]
    shared = set(sets[0].image_ids)
    for s in sets[1:]:
        shared &= set(s.image_ids)
    if not shared:
        raise NoSharedValidation(f"the runs of {source.name} share no validation images: evaluate on a view (--view)")
    first = sets[0]
    keep = [i for i, image_id in enumerate(first.image_ids) if image_id in shared]
    return EvalSet([first.image_ids[i] for i in keep], [first.paths[i] for i in keep], first.labels[keep],
                   first.description if len(sets) == 1 else f"{len(keep)} validation images shared by {len(sets)} runs")


def predict_source(source: Source, paths: list[str], device: str = "cpu", tta: str | None = None,
                   progress=None, workers: int = 2, groups: np.ndarray | None = None) -> np.ndarray:
    models = [load_model(run, device) for run in source.runs]
    probs = predict_paths(models, paths, tta=tta or source.tta, progress=progress, workers=workers)
    return decide(source, probs, groups)


def people_groups(catalog: Catalog, source: Source, es: EvalSet, progress=None) -> np.ndarray | None:
    """The eval set's photos grouped into people as the source learnt to (None: it does not pool people)."""
    if source.people is None:
        return None
    from .people import groups_for, photo_paths

    return groups_for(source.people, photo_paths(catalog, es.image_ids), progress)


def confusion(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    matrix = np.zeros((L.NUM_CLASSES, L.NUM_CLASSES), dtype=int)
    np.add.at(matrix, (labels, pred), 1)
    return matrix


def worst_confusions(labels: np.ndarray, pred: np.ndarray, image_ids: list[int], top: int = 8) -> list[dict]:
    matrix = confusion(labels, pred)
    np.fill_diagonal(matrix, 0)
    order = np.dstack(np.unravel_index(np.argsort(-matrix.ravel()), matrix.shape))[0]
    out = []
    for t, p in order[:top]:
        if matrix[t, p] == 0:
            break
        examples = [image_ids[i] for i in np.where((labels == t) & (pred == p))[0][:5]]
        out.append({"true": int(t), "pred": int(p), "count": int(matrix[t, p]), "true_name": L.class_name(int(t)),
                    "pred_name": L.class_name(int(p)), "examples": examples})
    return out


def plot_confusion(matrix: np.ndarray, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 8))
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    names = [f"{c} {L.class_name(c)}" for c in range(L.NUM_CLASSES)]
    ax.set_xticks(range(L.NUM_CLASSES), names, rotation=90, fontsize=6)
    ax.set_yticks(range(L.NUM_CLASSES), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_eval(catalog: Catalog, name: str, *, view: str | None = None, tta: str | None = None, device: str = "cpu",
             out_dir: Path | None = None, progress=None) -> EvalResult:
    source = resolve(catalog, name)
    oof = _out_of_fold(catalog, source) if view is None else None
    if oof is not None:  # a k-fold ensemble: every person was validated by the fold model that did not train on them
        es, probs = oof
    else:
        es = eval_set(catalog, source, view)
        probs = predict_source(source, es.paths, device, tta, progress,
                               groups=people_groups(catalog, source, es, progress))
    pred = probs.argmax(1)
    metrics = evaluate(probs, es.labels)
    metrics["support"] = np.bincount(es.labels, minlength=L.NUM_CLASSES).tolist()
    matrix = confusion(es.labels, pred)
    worst = worst_confusions(es.labels, pred, es.image_ids)
    # a run's own folder; an ensemble's beside its runs (the runs folder they were trained into)
    folder = out_dir or (Path(source.runs[0].folder) if not source.is_ensemble
                         else Path(source.runs[0].folder).parent / f"ensemble_{name}")
    png = str(plot_confusion(matrix, Path(folder) / f"confusion_{view or 'val'}.png", f"{name} on {es.description}"))
    with catalog.session() as session:
        session.add(Evaluation(source=name, view=view, images=len(es.labels),
                               metrics={k: v for k, v in metrics.items()}, created_at=utcnow()))
        session.commit()
    return EvalResult(name, es.description, len(es.labels), metrics, matrix.tolist(), worst, png, probs, es)


def _out_of_fold(catalog: Catalog, source: Source):
    """(eval set, probabilities) of a k-fold ensemble's recorded out-of-fold predictions, decided as its
    recorded decision says (tuned offsets cross-fitted: each person's by offsets tuned on the others); None for
    other sources."""
    from ..catalog.models import Image as ImageRow
    from .decision import honest_oof

    if not source.is_ensemble:
        return None
    with catalog.session() as session:
        ens = session.execute(select(Ensemble).where(Ensemble.name == source.name)).scalars().first()
    path = Path((ens.decision or {}).get("tuned_on", "")) if ens is not None and ens.decision else None
    if path is None or not path.is_file():
        return None
    data = np.load(path)
    with catalog.session() as session:
        known = set(session.execute(select(ImageRow.id).where(ImageRow.id.in_(data["image_ids"].tolist()))).scalars())
    keep = np.array([int(i) in known for i in data["image_ids"]])
    es = EvalSet(data["image_ids"][keep].tolist(), [""] * int(keep.sum()), data["labels"][keep],
                 f"out-of-fold predictions of {len(source.runs)} folds")
    return es, honest_oof(data, dict(ens.decision))[keep]


def make_ensemble(catalog: Catalog, name: str, runs: list[str], *, weights: list[float] | None = None,
                  vote: str = "soft", tta: str | None = None, device: str = "cpu", progress=None) -> EnsembleResult:
    if not runs:
        raise InvalidInput("an ensemble needs at least one run")
    if tta not in (None, "hflip"):
        raise InvalidInput(f"--tta must be hflip, got {tta!r}")
    weights = weights or [1.0] * len(runs)
    from ..train.job import check_new_name

    check_new_name(catalog, name)
    source = Source(name, [resolve(catalog, r).runs[0] for r in runs], weights, vote, tta, True)
    combine([np.ones((1, L.NUM_CLASSES)) / L.NUM_CLASSES] * len(runs), weights, vote)  # validates weights and vote before predicting
    try:
        es = eval_set(catalog, source)
    except NoSharedValidation:  # e.g. the k fold models of one split: every image was trained on by some member
        es = None
    metrics = None
    if es is not None:
        metrics = evaluate(predict_source(source, es.paths, device, tta, progress,
                                          groups=people_groups(catalog, source, es, progress)), es.labels)
    with catalog.session() as session:
        summary = None if metrics is None else \
            {k: v for k, v in metrics.items() if k != "class_f1"} | {"images": len(es.labels)}
        session.add(Ensemble(name=name, members=runs, weights=list(map(float, weights)), vote=vote, tta=tta,
                             metrics=summary, created_at=utcnow()))
        if metrics is not None:
            session.add(Evaluation(source=name, view=None, images=len(es.labels), metrics=metrics, created_at=utcnow()))
        session.commit()
    return EnsembleResult(name, es.description if es else None, len(es.labels) if es else 0, metrics)


def compare(catalog: Catalog, names: list[str]) -> list[dict]:
    """The latest recorded evaluation of each run/ensemble (evaluated now when there is none)."""
    out = []
    for name in names:
        with catalog.session() as session:
            ev = session.execute(select(Evaluation).where(Evaluation.source == name)
                                 .order_by(Evaluation.id.desc())).scalars().first()
        if ev is None:
            r = run_eval(catalog, name)
            out.append({"source": name, "images": r.images, **r.metrics})
        else:
            out.append({"source": name, "images": ev.images, **ev.metrics})
    return out


def gradcam_sheet(catalog: Catalog, name: str, n: int, out: Path, device: str = "cpu") -> Path:
    """Grad-CAM heatmaps over N validation images (correct and wrong, spread over classes) in one PNG."""
    import torch
    from PIL import Image, ImageDraw

    from ..train.data import MEAN, STD, read_prepared

    source = resolve(catalog, name)
    run = source.runs[0]
    es = eval_set(catalog, source)
    model = load_model(run, device)
    if not model.reads_images:
        raise InvalidInput(f"run {run.name} trained heads on frozen features: Grad-CAM needs a fine-tuned run "
                           "(train.recipe=finetune)")
    probs = predict_source(Source(run.name, [run], [1.0]), es.paths, device)
    pred = probs.argmax(1)
    rng = np.random.default_rng(0)
    right = [i for i in range(len(pred)) if pred[i] == es.labels[i]]
    wrong = [i for i in range(len(pred)) if pred[i] != es.labels[i]]
    chosen = list(rng.permutation(wrong)[: n // 2]) + list(rng.permutation(right)[: n - min(len(wrong), n // 2)])
    net = model.model.net if hasattr(model.model, "net") else model.model.nets["mask"]
    tiles = []
    for i in chosen[:n]:
        img = read_prepared(es.paths[i], model.size)
        x = ((torch.from_numpy(np.array(img)).permute(2, 0, 1).float() - MEAN) / STD)[None].to(model.device)
        feats = net.forward_features(x)
        feats.retain_grad()
        logits = net.forward_head(feats)
        target = int(pred[i]) if logits.shape[1] == L.NUM_CLASSES else int(logits.argmax(1))
        logits[0, target].backward()
        weights = feats.grad.mean((2, 3), keepdim=True)
        cam = torch.relu((weights * feats).sum(1))[0].detach().cpu().numpy()
        cam = cam / (cam.max() + 1e-8)
        heat = np.array(Image.fromarray((cam * 255).astype(np.uint8)).resize((model.size, model.size)))
        overlay = (0.55 * img + 0.45 * np.stack([heat, np.zeros_like(heat), 255 - heat], -1)).astype(np.uint8)
        tile = Image.fromarray(overlay).resize((160, 160))
        draw = ImageDraw.Draw(tile)
        ok = pred[i] == es.labels[i]
        draw.text((3, 3), f"true {es.labels[i]} pred {pred[i]}", fill=(0, 255, 0) if ok else (255, 60, 60))
        tiles.append(tile)
        net.zero_grad(set_to_none=True)
    if not tiles:
        raise NotFound("no validation images to draw")
    cols = min(6, len(tiles))
    sheet = Image.new("RGB", (cols * 160, -(-len(tiles) // cols) * 160))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * 160, (k // cols) * 160))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
