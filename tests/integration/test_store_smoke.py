from chalicelib.errors import ConcurrencyError
import pytest


def test_a_session_round_trips_through_create_update_and_get(store, session_id):
    store.create(session_id, '{"n":0}', 60)
    store.update(session_id, '{"n":1}', 1)
    assert store.get(session_id).state == {"n": 1}
    with pytest.raises(ConcurrencyError) as caught:
        store.update(session_id, '{"n":2}', 1)
    assert caught.value.actual_version == 2
