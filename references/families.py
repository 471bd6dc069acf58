"""The model families, one line each: the package that holds a family's reference runner, tiny builder, cases and
faults. The harness imports `<package>.cases` and `<package>.faults` from here on first use (harness/families.py);
a new family adds its folder under references/ and its line below (tests/test_architecture.py checks both)."""

FAMILIES: tuple[str, ...] = (
    "references.flux",
    "references.wan",
    "references.qwenimage",
    "references.zimage",
)
