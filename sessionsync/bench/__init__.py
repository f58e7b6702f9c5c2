"""``sessionsync bench``: measure sessionsync the way its users judge it.

Sections (each a module with ``run(ctx) -> dict``), run in one process, in
one go, by ``sessionsync.bench.runner.run_bench``:

* ``store``      get/create/update/delete against the raw redis-py floor
* ``cas_split``  the CAS update's time: client work, round trip, the script's server time
* ``handler``    the warm Lambda handler with API Gateway events (+ SQS send)
* ``coldstart``  fresh interpreters: import app.py and serve the first GET
* ``consumer``   events/s persisted by one consumer at batch 1, 10, 100
* ``memory``     Redis bytes per session against the state size
* ``memory_levers`` bytes per session of format variants, in a scratch server
* ``relay``      entries/s the outbox relay drains, at two backlog sizes (linearity)
* ``scale``      get/update latency with 10k, 100k and 1M sessions
* ``cluster``    get/update on a 3-master Redis Cluster beside one node, N client processes
* ``contention`` 16 CAS writers on one hot session; no update may be lost

Results go to one JSON file and one PNG chart (``--output-dir``), with the
machine, versions and git commit they were measured on.  The package is
imported only by the CLI command: nothing on a Lambda's path uses it.
"""
