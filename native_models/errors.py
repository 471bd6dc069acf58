"""Exception types of the native runtime.

Every error a user can cause (bad checkpoint, bad request, a stage fed the wrong kind of field) is one of
these, with a one-line message that names the offending value, so the CLI can print it without a traceback.
"""


class NativeError(Exception):
    """Base class for all errors raised deliberately by the native runtime."""


class CheckpointError(NativeError):
    """The checkpoint folder is missing, incomplete, corrupt, or names something this runtime cannot build."""


class RequestError(NativeError, ValueError):
    """The generation request is invalid for this model (size, steps, prompt...); a ValueError too, so code
    that validates values by catching ValueError (a golden's request, a parsed config) catches it."""


class StageFieldError(NativeError):
    """A stage found a batch field missing or of the wrong kind; the message names stage and field."""

    def __init__(self, stage: str, field: str, problem: str) -> None:
        super().__init__(f"stage {stage}: field '{field}' {problem}")
        self.stage = stage
        self.field = field
