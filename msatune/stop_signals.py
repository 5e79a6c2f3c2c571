"""How a command takes SIGTERM: as Ctrl-C.

Slurm (``scancel``, a job's time limit), systemd, Kubernetes and ``kill`` stop a job with SIGTERM.
Inside :func:`sigterm_as_ctrl_c` a SIGTERM does what Ctrl-C does at that moment: during a Ray Tune
run, Tune's own SIGINT handler stops the run gracefully (running trials end, finished ones stay
stored, the command prints its summary and how to continue); elsewhere ``KeyboardInterrupt``, so
a command's own Ctrl-C path cleans up. A second SIGTERM, like a second Ctrl-C, stops at once.

``ray.init`` replaces the process's SIGTERM handler with its own (and Ray's core worker installs a
C-level one that dumps a native stack trace and exits): :func:`reclaim_sigterm` puts ours back
after it, only inside the block. Outside it (a library user's own script) nothing is changed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it).
SIGTERM_EXIT = 128 + signal.SIGTERM

_active = False
_received = False


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Ray Tune's: a graceful stop of the run
    else:  # Python's default, or SIGINT ignored (a background job): stop as Ctrl-C would
        raise KeyboardInterrupt


def _install() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    return True


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM stops the command as Ctrl-C does; the previous handler after it."""
    global _active, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _active, _received = True, False
    _install()
    try:
        yield
    finally:
        _active = False
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def reclaim_sigterm() -> None:
    """After ``ray.init``: SIGTERM is Ctrl-C again, if a :func:`sigterm_as_ctrl_c` block is open."""
    if _active:
        _install()


def terminated() -> bool:
    """Whether a SIGTERM arrived in the current (or last) :func:`sigterm_as_ctrl_c` block."""
    return _received
