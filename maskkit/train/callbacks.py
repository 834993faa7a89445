"""What happens around training without being training: loggers and plots as callbacks on the trainer's
events (run start, each epoch's metrics, run end). The trainer knows none of them by name; the run's
config chooses them (`log.tensorboard`, `log.wandb`), and library users can pass their own."""

from __future__ import annotations

import csv
from pathlib import Path

from .. import labels as L
from ..errors import MaskkitError

METRIC_KEYS = ("accuracy", "macro_f1", "mask_f1", "gender_f1", "age_f1", "age_f1_wear", "age_f1_incorrect",
               "age_f1_not_wear")
CSV_COLUMNS = ["epoch", "train_loss", "val_loss", *METRIC_KEYS, "lr", "seconds", "best"] + \
    [f"class_f1_{c}" for c in range(L.NUM_CLASSES)]


class Callback:
    """Override what you need; every hook gets the run's folder and name."""

    def on_run_start(self, run_dir: Path, run_name: str, cfg: dict) -> None: ...

    def on_epoch_end(self, run_dir: Path, metrics: dict) -> None: ...

    def on_run_end(self, run_dir: Path, status: str) -> None: ...


def _row(metrics: dict) -> dict:
    row = {k: metrics.get(k) for k in CSV_COLUMNS if not k.startswith("class_f1_")}
    row.update({f"class_f1_{c}": v for c, v in enumerate(metrics.get("class_f1", []))})
    return row


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in _row(metrics).items() if isinstance(v, (int, float)) and k not in ("epoch", "best")}


class CsvLogger(Callback):
    """metrics.csv: one row per epoch (appended, so a resumed run continues the file)."""

    def on_epoch_end(self, run_dir, metrics):
        path = run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(_row(metrics))


class TensorBoardLogger(Callback):
    def __init__(self):
        self.writer = None

    def on_run_start(self, run_dir, run_name, cfg):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(run_dir / "tb"))

    def on_epoch_end(self, run_dir, metrics):
        if self.writer is not None:
            for k, v in _scalars(metrics).items():
                self.writer.add_scalar(k, v, metrics["epoch"])
            self.writer.flush()

    def on_run_end(self, run_dir, status):
        if self.writer is not None:
            self.writer.close()


class WandbLogger(Callback):
    def __init__(self):
        try:
            import wandb
        except ImportError:
            raise MaskkitError("log.wandb=true but wandb is not installed (pip install wandb)") from None
        self.wandb, self.run = wandb, None

    def on_run_start(self, run_dir, run_name, cfg):
        self.run = self.wandb.init(project="maskkit", name=run_name, config=cfg, resume="allow")

    def on_epoch_end(self, run_dir, metrics):
        self.run.log(_scalars(metrics), step=metrics["epoch"])

    def on_run_end(self, run_dir, status):
        if self.run is not None:
            self.run.finish()


class CurvesPlot(Callback):
    """curves.png when a run finishes."""

    def on_run_end(self, run_dir, status):
        if status != "finished":
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
        a.plot(epochs, [float(r["train_loss"]) for r in rows], label="train loss")
        a.plot(epochs, [float(r["val_loss"]) for r in rows], label="val loss")
        a.legend()
        for key in ("macro_f1", "accuracy", "mask_f1", "gender_f1", "age_f1"):
            b.plot(epochs, [float(r[key]) for r in rows], label=key)
        b.legend(fontsize=7)
        b.set_xlabel("epoch")
        fig.tight_layout()
        from ..files import atomic_path

        with atomic_path(run_dir / "curves.png", "plot") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def from_config(cfg: dict) -> list[Callback]:
    """The callbacks a run's config asks for (metrics.csv and the curves always)."""
    callbacks: list[Callback] = [CsvLogger()]
    if cfg["log"]["tensorboard"]:
        callbacks.append(TensorBoardLogger())
    if cfg["log"]["wandb"]:
        callbacks.append(WandbLogger())
    callbacks.append(CurvesPlot())
    return callbacks
