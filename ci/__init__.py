"""CI suites: selecting tests by suite, balanced partitions, bounded infrastructure retries, execution reports."""
