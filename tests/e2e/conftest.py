"""Fixtures of the end-to-end tests: a run folder embedded Postgres can use."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def folder() -> Iterator[Path]:
    """A fresh folder for a run's plan, state and output. Not under tmp_path: embedded Postgres runs as its
    own user when the tests run as root, and pytest resets its temp root to mode 0700."""
    path = Path(tempfile.mkdtemp(prefix="mge-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
