"""A session: the unit the API serves, the store keeps and PostgreSQL records."""
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Session:
    """One session as stored.  ``state_json`` is kept raw so that a read can
    be served without decoding and re-encoding the document."""

    session_id: str
    version: int
    state_json: str
    created_at: str
    updated_at: str
    ttl_seconds: int
    deleted: bool = False
    #: the owner given at creation (``GET /owners/{owner_id}/sessions``), or None
    owner_id: str | None = None
    #: the recorded outcome of an earlier request with the same
    #: Idempotency-Key (chalicelib.domain.idempotency), not a new write
    replayed: bool = field(default=False, compare=False)

    @property
    def state(self) -> dict:
        return json.loads(self.state_json)

    def to_json(self) -> str:
        """The API representation, built around the raw state JSON."""
        # owner ids match SESSION_ID_PATTERN: nothing to escape
        owner = ',"owner_id":"%s"' % self.owner_id if self.owner_id else ""
        return ('{"session_id":"%s"%s,"version":%d,"created_at":"%s","updated_at":"%s",'
                '"ttl_seconds":%d,"state":%s}' % (
                    self.session_id, owner, self.version, self.created_at, self.updated_at,
                    self.ttl_seconds, self.state_json))
