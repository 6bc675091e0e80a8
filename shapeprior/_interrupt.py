"""Interruptions (Ctrl-C, SIGTERM) that reach the code as another exception.

Python runs a signal handler between bytecodes. When that happens inside a
callback that compiled code made (Numba's dispatcher calling back into the
interpreter), the ``KeyboardInterrupt`` or :class:`Terminated` raised there
comes back as a ``SystemError`` "returned a result with an exception set",
whose ``__cause__`` is the interruption. ``except Exception`` catches that
``SystemError``: a batch would count the case as failed and go on with the
next one, and the command line would report an internal error. Every place
that catches ``Exception`` broadly calls :func:`reraise_interruption` first.
"""

from __future__ import annotations


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that staged outputs are cleaned up."""


def interruption(exc):
    """The ``KeyboardInterrupt`` or :class:`Terminated` behind ``exc`` (itself,
    or one in its chain of causes and contexts), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return None


def reraise_interruption(exc) -> None:
    """Raise the interruption behind ``exc``, if there is one."""
    it = interruption(exc)
    if it is not None:
        raise it
