"""The project's one vocabulary of user mistakes.

Every error a user can cause and fix (a bad argument, a missing file of theirs, a run that
lacks what an analysis needs) is a `ProbeError`; the CLI prints such an error as one line and
exits 2. Anything else is a bug and keeps its traceback. It imports nothing of ours and nothing
heavy (a leaf of the import graph: docs/design.md) so any layer can raise these, and the CLI can
name them without loading numpy or torch.

Each class also derives from the builtin exception a Python caller would expect (ValueError
for a bad value, KeyError for a missing key), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ProbeError(Exception):
    """A user mistake; the message says what is wrong and how to fix it."""


class InputError(ProbeError, ValueError):
    """Something passed to a model or an analysis is wrong (text, tokens, arguments, flags)."""


class MissingHook(InputError, KeyError):
    """A hook that a model does not have, or that a run did not record.

    A `KeyError` too (mapping-style lookups raise it), but it prints as its message:
    `KeyError.__str__` would wrap the message in quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PromptSetError(InputError):
    """A prompt set that cannot be loaded; the message says where, what, and how to fix it."""


class StoreError(ProbeError, ValueError):
    """A run cannot be written or read as asked (the message says why and what to do)."""


class UnknownRun(StoreError):
    """The dashboard was asked for a run id it was not given."""


class RunUnavailable(StoreError):
    """A run the dashboard was given cannot be read (missing, corrupt, newer schema)."""


class ModelNotFound(ProbeError, ValueError):
    """A model name that is neither a bundled model nor a checkpoint directory."""


class UnsupportedArchitecture(ProbeError, ValueError):
    """A checkpoint of a family this project has no config and weight table for."""


class CheckpointMismatch(ProbeError, ValueError):
    """A checkpoint whose weights do not fit its config, or a model that is not a run's."""


def is_user_error(e: BaseException) -> bool:
    """True for a mistake the user can fix (print one line, exit 2); False for a bug.

    The OS errors a user causes by naming a path (missing file, permission, a directory where
    a file was expected) count as user mistakes; a bare `KeyError` or `ValueError` does not:
    raised from inside the code, it is a bug and must keep its traceback.
    """
    return isinstance(e, (ProbeError, FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError, FileExistsError))


def one_line(e: BaseException) -> str:
    """The message of an error as one line for the terminal or the dashboard."""
    msg = e.args[0] if isinstance(e, KeyError) and not isinstance(e, MissingHook) and e.args else str(e)
    return str(msg) or type(e).__name__
