"""The app in process, as the functional tests drive it."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tests.support.constants import PROJECT_DIR


@contextmanager
def app_client(stage_name: str = "local", project_dir: Path = PROJECT_DIR):
    """The app in process (chalice.test), its HTTP side, with the stage's
    config; the runtime is whatever the test installed."""
    from chalice.test import Client

    from app import app
    with Client(app, stage_name=stage_name, project_dir=str(project_dir)) as client:
        yield client.http
