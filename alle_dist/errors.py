"""Every exception type of alle_dist, in one place.

Two families:
- `UsageError` and its subclasses: a problem the user can fix (a bad path, a bad config value, a
  stale or tampered artifact). The command line prints the message as one line and exits 2, also
  when it was raised inside a Ray task or actor (`user_error_in` finds it in Ray's wrapper).
- Per-input problems (`DecodeError`, `InputError`): one image that can't be used. They never stop
  a job; the image becomes an error row naming the reason.
"""
from __future__ import annotations


class UsageError(RuntimeError):
    """A problem the user can fix; the message is one line naming the problem and the fix."""


class ConfigError(UsageError, ValueError):
    """A config value that can't be used; the message names the key and the fix."""


class StorageError(UsageError):
    """A path, bucket or file that can't be used; the message names it and what to do."""


class ModelIntegrityError(StorageError):
    """A model or checkpoint file that fails its sha256 or won't parse."""


class RayStartError(UsageError):
    """Ray could not be started or reached (e.g. its start-up timed out on a busy machine)."""


class StaleArtifactError(UsageError):
    """An artifact made from inputs that have changed since: the message names it and the rebuild."""


class ClassifyIncomplete(RuntimeError):
    """The final reconciliation of a classify job found inputs missing or duplicated."""


class DecodeError(ValueError):
    """An image that can't be decoded; str(e) is the reason recorded in the error column."""


class InputError(Exception):
    """One input that can't be read; str(e) goes to the row's error column."""


def user_error_in(exc: BaseException) -> UsageError | None:
    """The UsageError behind `exc`, following Ray's wrappers (RayTaskError.cause) and Python's chain.

    Ray raises a task's exception as a RayTaskError whose `cause` is the original object (pickled
    across), so the type travels: no parsing of traceback text. Ray Data keeps it only with
    DataContext.raise_original_map_exception, which runtime.configure_data_context sets.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UsageError):
            return cause
        if isinstance(exc, UsageError) and not _is_ray_wrapper(exc):
            return exc
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _is_ray_wrapper(exc: BaseException) -> bool:
    # RayTaskError(StorageError) is an instance of both; its str() carries the remote traceback.
    return type(exc).__module__.startswith("ray.")
