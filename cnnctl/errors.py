"""The CnnctlError family.

Library code raises these with a message that says what went wrong *and* how to fix it. Only
`cnnctl.cli` turns them into a one-line message on stderr and a non-zero exit code, so a user
never sees a traceback for a mistake in their own input.
"""

from __future__ import annotations


class CnnctlError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Set on torchrun ranks other than 0 for errors that rank 0 reports too: exit without a line.
        self.quiet = False
        # Extra lines shown before the one-line message (e.g. a partial shape trace).
        self.details = details or []


class UsageError(CnnctlError):
    """A bad option value or combination of options."""


class ModelError(CnnctlError):
    """Unknown model, or a model that cannot be built for the requested input."""


class ShapeError(CnnctlError):
    """An input that cannot pass through a model: carries the diagnosis."""


class DataError(CnnctlError):
    """Missing, unreadable or inconsistent data."""


class CheckpointError(CnnctlError):
    """A checkpoint or ONNX file that is missing, damaged or not cnnctl's."""


class RunDirError(CnnctlError):
    """A run directory that cannot be used (non-empty, locked, missing files)."""


class TrainingError(CnnctlError):
    """Training stopped because it cannot go on (e.g. the loss became NaN)."""

    exit_code = 3


class ExportError(CnnctlError):
    """An export that failed its checks; nothing is left on disk."""

    exit_code = 3


class TrackingError(CnnctlError):
    """The tracking server or model registry could not be reached or refused a request."""

    exit_code = 3


class PartialFailure(CnnctlError):
    """Some inputs failed (each already reported), the rest succeeded: exit 1."""

    exit_code = 1


class GateError(CnnctlError):
    """A quality gate failed (e.g. --min-accuracy): exit 1 so shell scripts can stop."""

    exit_code = 1


class InterruptedRun(CnnctlError):
    """SIGINT/SIGTERM stopped a run; its directory is consistent and resumable. Exit 130."""

    exit_code = 130


class DistributedError(CnnctlError):
    """Another rank died or stopped answering; this rank stops too."""

    exit_code = 3


class PeerFailed(CnnctlError):
    """Another rank failed during set-up and reports why itself; this rank exits quietly."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.quiet = True
