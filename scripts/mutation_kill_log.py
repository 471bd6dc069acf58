"""pytest plugin for scripts/mutation.sh: records which test killed each mutant.

mutmut runs the parity selection once per mutant (with `-x`, so it stops at the first failure) but keeps only
the exit code. Loaded with `-p scripts.mutation_kill_log` (pyproject's [tool.mutmut] pytest_add_cli_args), this
appends `mutant<TAB>test id<TAB>phase` for the first failing test to `killed_by.tsv` in mutmut's working
folder (mutants/), so the report can say which parity comparison killed what. mutmut's own set-up runs (stats,
the clean run, the forced-fail check) are not mutants and are not logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LOG_NAME = "killed_by.tsv"
_NOT_A_MUTANT = {"", "stats", "fail", "mutant_generation"}
_logged: set[str] = set()  # mutants whose first failure is already written


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append the first failing test of this mutant's run (one line, O_APPEND: safe across forked workers)."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if mutant in _logged or mutant in _NOT_A_MUTANT or not report.failed:
        return
    _logged.add(mutant)
    line = f"{mutant}\t{report.nodeid}\t{report.when}\n".encode()
    fd = os.open(Path.cwd() / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
