"""Shared fixtures: real Redis (single node and a local 3-master cluster),
real PostgreSQL, LocalStack.  A missing service FAILS the test run; nothing
here skips.  Every fixture that creates something removes it in a finalizer.

The fixtures live in tests/fixtures/, one module per subject, loaded here as
plugins; constants and helpers the tests import are in tests/support/.
"""
pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.app",
    "tests.fixtures.postgres",
    "tests.fixtures.aws",
    "tests.fixtures.pipeline",
    "tests.fixtures.observability",
    "tests.fixtures.packaging",
]
