"""The parity harness: traces, comparison under tolerances, localization, reports and the `diffparity` CLI."""
