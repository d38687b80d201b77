"""Shared fixtures: the real data beside the checkout, and an isolated environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$BENCHBIO_SHARED_DATA``."""
    env = os.environ.get("BENCHBIO_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets; the test is skipped, with the reason, where they are absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set BENCHBIO_SHARED_DATA to run this test)")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Each test gets its own cache and MLflow store, never the user's."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("BENCHBIO_CACHE", str(base / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("BENCHBIO_DATA", raising=False)
