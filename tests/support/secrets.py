"""What the Secrets Manager tests share: a clock they move by hand, and the
real client with its reads counted."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingClient:
    """The real Secrets Manager client; counts the reads."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def get_secret_value(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self.client.get_secret_value(**kwargs)


@contextmanager
def temporary_secret(client: Any, prefix: str, value: dict[str, Any]) -> Iterator[str]:
    """A Secrets Manager secret of the test's own (its ARN), deleted after
    (unless the test deleted it first)."""
    arn = client.create_secret(Name=f"{prefix}-{uuid.uuid4().hex[:8]}",
                               SecretString=json.dumps(value))["ARN"]
    try:
        yield arn
    finally:
        try:
            client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        except client.exceptions.ResourceNotFoundException:
            pass  # the test deleted it
