"""Constants the tests share: where the services are, the test API key."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

# Tests use database 1 of the machine's Redis so that `make run` (db 0) and
# the test suite can share a machine.
_REDIS_BASE_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/1")
# Under pytest-xdist each worker flushes a database of its own: worker gwN
# uses the base database + N (the run starts at most a few workers).
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_BASE, _DB = _REDIS_BASE_URL.rsplit("/", 1)
REDIS_TEST_URL = f"{_BASE}/{int(_DB) + _WORKER}"
# Pub/Sub channels belong to the server, not to a database: writes on the
# machine's Redis publish on a channel of the test run's own, never on the
# one a developer's `sessionsync watch` reads.
TEST_CHANNEL = f"sessionsync-test-{uuid.uuid4().hex[:8]}"
API_KEY = "test-key-0123456789abcdef"
#: the plaintext key in the keys secret of tests/fixtures/aws.py's keys_secret
SECRET_PLAINTEXT_KEY = "localstack-key-0123456789abcdef"
# The headers of an authenticated call to the app, and of one with a JSON body.
BEARER = {"Authorization": f"Bearer {API_KEY}"}
AUTH = {**BEARER, "Content-Type": "application/json"}
# The repository: chalice.test reads .chalice/config.json from here.
PROJECT_DIR = Path(__file__).resolve().parents[2]
PG_TEST_ADMIN_URL = os.environ.get("PG_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LOCALSTACK_URL = os.environ.get("LOCALSTACK_URL", "http://127.0.0.1:4566")


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name
