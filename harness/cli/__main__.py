"""`python -m harness.cli ...`: the `diffparity` command without its console script."""

from harness.cli.main import entry

entry()
