"""The model test: hypothesis drives the real service with operations and
faults, and every answer must be one the model allows (tests/model/model.py,
the specification; docs/guarantees.md, "The model").

The model runs on a single Redis endpoint here and on a Redis Cluster in
test_model_cluster.py (the same machine; the faults each world has:
world.REDIS_FAULTS).  The README test command runs a fixed budget of each,
derandomized (the same examples every run: CI is deterministic); `make
model` a long one (MODEL_EXAMPLES, for both; MODEL_REDIS=single or cluster
for one; MODEL_RANDOM=1 for new examples, MODEL_PROMISES to judge a subset
of the promises, MODEL_SURVEY=1 to report every violation, raise none, and
say which example first broke each promise).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.model.machine import ModelMachine, judged_promises
from tests.model.world import World

pytestmark = [pytest.mark.model, pytest.mark.localstack]

# the fixed budget of the README test command: about a minute here
EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "8"))
STEPS = int(os.environ.get("MODEL_STEPS", "20"))
SHRINK = os.environ.get("MODEL_SHRINK", "0") == "1"


def run_model(world: World, examples: int) -> None:
    """``examples`` examples of the machine on ``world``."""
    ModelMachine.world = world
    ModelMachine.promises = judged_promises()
    ModelMachine.examples = 0
    ModelMachine.survey = os.environ.get("MODEL_SURVEY") == "1"
    ModelMachine.found = {}
    run_state_machine_as_test(ModelMachine, settings=settings(
        max_examples=examples, stateful_step_count=STEPS, deadline=None, database=None,
        derandomize=os.environ.get("MODEL_RANDOM") != "1", print_blob=False,
        suppress_health_check=list(HealthCheck),
        # shrinking replays on real servers for many minutes: `make model`'s
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])]))
    if ModelMachine.survey:
        print(f"MODEL SURVEY: promise -> first example that broke it: {ModelMachine.found}")


@pytest.mark.timeout(max(300, EXAMPLES * 60))
def test_every_answer_under_every_fault_is_one_the_model_allows(world):
    run_model(world, EXAMPLES)


def test_another_tenant_s_key_reaches_only_sessions_of_its_own(machine):
    """Every call of the other tenant's key on the example's ids and owner,
    each followed by the reads of both tenants' sessions: the other tenant's
    answers are those of its own (absent, then created) sessions, the
    example's sessions are unchanged, and each tenant's revoke-all ends only
    its own owner's sessions (the random search draws the rule too)."""
    state = machine()
    state.create(i=0, owned=True, ttl=8, via_put=False)
    state.create(i=1, owned=True, ttl=8, via_put=False)
    for i in (0, 2):
        for call in sorted(ModelMachine.OTHER_TENANT_CALLS):
            state.other_tenant(i=i, call=call)
            state.every_session_reads_as_the_model_allows()
    state.other_tenant(i=1, call="create")  # the other tenant's s0, s1, s2 live, owned
    state.revoke_all()  # the example's owner: its s0, s1 end; the other tenant's stay
    state.every_session_reads_as_the_model_allows()
    state.other_tenant(i=0, call="revoke-all")
    state.every_session_reads_as_the_model_allows()
    state.teardown()
