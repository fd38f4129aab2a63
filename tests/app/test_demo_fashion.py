"""`lethe demo --dataset fashion-mnist`: Fashion-MNIST (here a tiny stand-in in the Debian package's idx format)
registered as Parquet with PNG bytes, validated, trained, scored and measured through real jobs; without the
package the demo says how to install it and records nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app import artifacts
from tests.engine.test_fashion_mnist import _write_idx
from workers.engine import fashion_mnist


@pytest.fixture
def tiny_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    for split, n in (("train", 60), ("test", 30)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        images[np.arange(n), labels * 2, :] = 255  # one bright row per class: learnable
        _write_idx(root / fashion_mnist.FILES[split][0], images)
        _write_idx(root / fashion_mnist.FILES[split][1], labels)
    monkeypatch.setattr(fashion_mnist, "ROOT", root)
    return root


def test_the_fashion_mnist_demo_registers_parquet_images_and_trains_a_cnn(sqlite_env: dict[str, str],
                                                                         tiny_fashion: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.celery_app as ca
    from app.settings import get_settings

    # this process publishes to this test's broker (an earlier test may have built the Celery app on another)
    monkeypatch.setattr(ca, "celery", ca.make_celery(get_settings()))
    from app.datasets.tables import Dataset
    from app.db import session_scope
    from app.demo import run_demo
    from app.jobs.tables import Job
    from app.registry.tables import Model

    lines: list[str] = []
    result = run_demo(dataset="fashion-mnist", size=40, echo=lines.append)
    assert result["ref"] == "fashion-mnist@1"
    with session_scope(readonly=True) as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "fashion-mnist"))
        model = s.scalar(select(Model).where(Model.name == "fashion-mnist"))
        assert (ds.format, ds.features, ds.status, ds.input_shape) == ("parquet", "image", "ready", [1, 28, 28])
        assert (ds.n_points, ds.n_test) == (40, 10) and ds.has_subjects
        assert model.architecture["kind"] == "cnn" and model.current_version == 1
        uri = ds.uri
        # every job went through the outbox and the broker to the worker the demo ran beside itself
        ran = s.execute(select(Job.kind, Job.status, Job.worker).where(
            (Job.model_id == model.id) | (Job.dataset_id == ds.id))).all()
        assert {kind for kind, _, _ in ran} >= {"validate", "train", "score"}
        assert all(status == "completed" and worker and worker != "inline" for _, status, worker in ran), ran
    table = pq.read_table(artifacts.path_of(uri))
    assert table.column("image")[0].as_py()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("validating" in line for line in lines)
    assert run_demo(dataset="fashion-mnist", size=40, echo=lines.append)["ref"] == "fashion-mnist@1"  # idempotent


def test_without_the_package_the_demo_says_how_to_install_it(sqlite_env: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from app import cli

    monkeypatch.setattr(fashion_mnist, "ROOT", tmp_path / "absent")
    out = CliRunner().invoke(cli.cli, ["demo", "--dataset", "fashion-mnist"], env={"COLUMNS": "250"})
    assert out.exit_code == 1
    assert "apt-get install dataset-fashion-mnist" in out.output
    assert not (artifacts.root() / "datasets").exists() or not list((artifacts.root() / "datasets").iterdir())
