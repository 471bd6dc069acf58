"""The `diffparity` command: main.py (`main`, `entry`: the parser, one-line errors, exit codes), common.py
(helpers every subcommand shares: `OneLineParser`, `UsageError`, exit codes, the CASE argument), commands/ (one
module per subcommand). `python -m harness.cli` runs it without the console script."""
