import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MASKKIT_CATALOG", None)

FACEBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "facebench"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def cli(runner, tmp_path):
    """Run the real CLI on a catalog in tmp_path; returns the click Result."""
    from maskkit.cli import app

    catalog = tmp_path / "catalog.db"

    def run(*args, ok=True, input=None):
        result = runner.invoke(app, ["--catalog", str(catalog), *map(str, args)], input=input)
        if ok and result.exit_code != 0:
            raise AssertionError(f"maskkit {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}\n{result.exception!r}")
        return result

    run.catalog = catalog
    return run


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A drawn dataset in the competition layout (12 people, 96x128, messy), made once per session."""
    from maskkit.synthetic import make_dataset

    out = tmp_path_factory.mktemp("tiny")
    made = make_dataset(out, people=12, eval_people=3, seed=1, size=(96, 128))
    return made


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    """A private, writable copy of the tiny dataset."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset["train"].parent, dst)
    return {"train": dst / "train", "eval": dst / "eval"}


@pytest.fixture
def facebench():
    if not (FACEBENCH / "train" / "train.csv").is_file():
        pytest.skip(f"facebench not found at {FACEBENCH}")
    return FACEBENCH
