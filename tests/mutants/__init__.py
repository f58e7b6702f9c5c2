"""Named mutants: each one breaks one guarantee of docs/guarantees.md on
purpose, and names the tests that must catch it.

``catalog.py`` lists them; ``python -m tests.mutants`` (``make mutants``)
applies each to a scratch copy of the tree, runs its tests and fails if any
mutant survives.  See the "Mutants" section of docs/guarantees.md.
"""
