"""The project directory: where ``app.py`` and ``.chalice/config.json`` are.

The ``sessionsync`` package holds the tools only.  ``app.py`` (the Lambda
entry point) is no module of site-packages: the commands that serve or
measure the app (``serve``, ``bench``) and the stage defaults read it from
the project directory, which is, in order:

1. ``SESSIONSYNC_PROJECT_DIR`` (what the CLI's ``--project-dir`` sets);
2. the checkout this package was imported from, when it holds ``app.py``
   (a checkout on PYTHONPATH or an editable install, as ``make run`` uses);
3. the current directory (a wheel installed elsewhere, run from a checkout).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

PROJECT_DIR_ENV = "SESSIONSYNC_PROJECT_DIR"
_CHECKOUT = Path(__file__).resolve().parents[1]


def project_dir() -> Path:
    chosen = os.environ.get(PROJECT_DIR_ENV)
    if chosen:
        return Path(chosen).resolve()
    if (_CHECKOUT / "app.py").is_file():
        return _CHECKOUT
    return Path.cwd()


def chalice_config() -> Path:
    return project_dir() / ".chalice" / "config.json"


def import_app() -> ModuleType:
    """The project's ``app.py``, imported as module ``app`` as Lambda imports
    it (and as ``chalice local`` does: the project directory on sys.path)."""
    directory = str(project_dir())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module("app")
