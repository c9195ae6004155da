"""The project's error types. Each carries the process exit code the CLI turns it into.

Exit codes (the CLI contract): 1 the run failed on invalid data; 2 bad usage or input
(a missing folder, an unusable flag). Messages are one line and name the offending file.
"""

from __future__ import annotations


class ResnetCifarError(Exception):
    """Base class: a failure the user can act on, reported as one line without a traceback."""

    exit_code: int = 1


class DataError(ResnetCifarError):
    """The data is there but invalid: corrupt image, bad checksum, hostile pickle, wrong shape."""

    exit_code = 1


class UsageError(ResnetCifarError):
    """The request cannot be served as given: a missing folder, an unknown layout, a bad flag."""

    exit_code = 2
