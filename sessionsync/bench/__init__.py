"""``sessionsync bench``: measure sessionsync the way its users judge it.

Each section is a module with ``run(ctx) -> dict`` (``runner.SECTION_ORDER``
lists them), run in one process, in one go, by ``runner.run_bench``; what
they share (clients, servers and processes, rounds, statistics) is in
``harness``, ``http_client`` and ``stats``.  Every figure is a ratio to a
floor measured in the same run; docs/performance.md says what each section
measures and shows the figures of the last full run.

Results go to one JSON file and one PNG chart (``--output-dir``), with the
machine, versions and git commit they were measured on.  Nothing on a
Lambda's path imports this package.
"""
