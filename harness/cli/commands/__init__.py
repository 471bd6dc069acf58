"""One module per `diffparity` subcommand; each exposes `register(subparsers)` that adds its parser and
sets `handler` (a function of the parsed args returning the exit code)."""
