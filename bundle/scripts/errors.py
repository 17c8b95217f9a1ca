"""The project's error types and how an uncaught error is shown: the problem is the last line a user reads.

Every error the bundle raises about the user's input or environment (a datalist, a checkpoint, an image, the
output folder, the tracking server) is a :class:`BundleError`. Under ``python -m monai.bundle`` MONAI wraps it in
``RuntimeError: Failed to evaluate ConfigExpression ...`` (and ignite and the transforms add their own layers),
so the message would sit 5-15 lines above the end of a long traceback. :func:`install_error_hook` (the first
step of every workflow's ``initialize``) replaces what Python prints for an uncaught error:

- a :class:`BundleError` anywhere in the chain: one line naming the workflow step, then the project's message as
  the last line (``GU2NET_TRACEBACK=1`` prints the full traceback before it);
- any other error: the usual traceback, then its root cause past MONAI's wrappers as the last line.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = ["BundleError", "as_flag", "install_error_hook", "root_error", "error_summary"]

# messages of the layers MONAI puts around an error raised inside a config expression, a component or a transform
_WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform")


class BundleError(Exception):
    """An error about the user's input or environment; its message says what and where, and it is shown last."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return seen


def _is_wrapper(exc: BaseException) -> bool:
    return type(exc) is RuntimeError and str(exc).startswith(_WRAPPERS)


def root_error(exc: BaseException) -> BaseException:
    """The error to show: the outermost :class:`BundleError` in the chain, else the first one that is not one of
    MONAI's wrappers (``Failed to evaluate ...``, ``Failed to instantiate ...``, ``applying transform ...``)."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, BundleError):
            return e
    for e in chain:
        if not _is_wrapper(e):
            return e
    return chain[-1]


def error_summary(exc: BaseException) -> str:
    """The last line printed for ``exc``: the project's message, or ``Type: message`` of the root cause."""
    root = root_error(exc)
    if isinstance(root, BundleError):
        return f"ERROR: {root}"
    text = str(root).strip()
    return f"ERROR: {type(root).__name__}: {text}" if text else f"ERROR: {type(root).__name__}"


def _step(exc: BaseException) -> str | None:
    """The config expression MONAI was evaluating when ``exc`` was raised (its first line), if any."""
    for e in _chain(exc):
        if _is_wrapper(e) and str(e).startswith("Failed to evaluate"):
            text = " ".join(str(e).split()[4:])  # after 'Failed to evaluate ConfigExpression:'
            return text.replace("__local_refs['", "@").replace("']", "")[:160]
    return None


def _hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if not isinstance(value, Exception):  # KeyboardInterrupt, SystemExit: Python's own way
        sys.__excepthook__(etype, value, tb)
        return
    root = root_error(value)
    if isinstance(root, BundleError) and not os.environ.get("GU2NET_TRACEBACK"):
        step = _step(value)
        where = f" while evaluating {step}" if step else ""
        print(f"\nThe workflow stopped{where} (GU2NET_TRACEBACK=1 shows the traceback):", file=sys.stderr)
    else:
        traceback.print_exception(etype, value, tb, file=sys.stderr)
        print(file=sys.stderr)
    print(error_summary(value), file=sys.stderr, flush=True)


_hook._gu2net = True  # type: ignore[attr-defined]


def install_error_hook() -> None:
    """Make Python print the project's message as the last line of an uncaught error (idempotent).

    Called first in every workflow's ``initialize``: ``python -m monai.bundle`` has no entry point of the bundle's
    own to catch errors in, and its wrappers would otherwise end every traceback.
    """
    if not getattr(sys.excepthook, "_gu2net", False):
        sys.excepthook = _hook


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", "null", ""}


def as_flag(value: object, name: str = "option") -> bool:
    """A command-line flag as a bool: ``python -m monai.bundle`` passes ``--resume false`` as the *string*
    ``"false"`` (only ``False`` becomes a bool), which Python would take as true."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise BundleError(f"--{name} {value!r}: expected true or false.")
    return bool(value)
