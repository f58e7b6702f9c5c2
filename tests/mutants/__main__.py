"""``python -m tests.mutants``: see tests/mutants/runner.py."""
import sys

from tests.mutants.runner import main

sys.exit(main())
