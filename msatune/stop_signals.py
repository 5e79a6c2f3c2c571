"""How a command takes SIGTERM: as Ctrl-C.

Slurm (``scancel``, a job's time limit), systemd, Kubernetes and ``kill`` stop a job with SIGTERM.
Inside :func:`sigterm_as_ctrl_c` a SIGTERM does what Ctrl-C does at that moment: during a Ray Tune
run, Tune's own SIGINT handler stops the run gracefully (running trials end, finished ones stay
stored, the command prints its summary and how to continue); elsewhere ``KeyboardInterrupt``, so
a command's own Ctrl-C path cleans up. A second SIGTERM, like a second Ctrl-C, stops at once.

``ray.init`` replaces the process's SIGTERM handler with its own (and Ray's core worker installs a
C-level one that dumps a native stack trace and exits): :func:`reclaim_sigterm` puts ours back
after it, only inside the block. Outside it (a library user's own script) nothing is changed.

Slurm and systemd send SIGTERM to every process of the job, Ray's own too: then the graceful stop
cannot finish (Ray's calls wait a minute for a GCS that is gone, past Slurm's 30 s before its
SIGKILL). :func:`watch_after_sigterm` names what the stop needs; once a SIGTERM came and that is
gone, the command says so in one line and exits 143 at once, as after ``kill -9`` (the store
holds every finished trial; ``msatune resume`` re-runs the ones left running). Ray's own core
worker can end the process first (exit 1, within ~0.1 s, when its object store's connection
breaks), so every SIGTERM is announced the moment it arrives, with how to continue: a thread
woken through :func:`signal.set_wakeup_fd` writes the line, whatever the main thread is waiting on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

#: The exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it).
SIGTERM_EXIT = 128 + signal.SIGTERM

_active = False
_received = False
#: What a graceful stop needs, while watched: ``gone() -> bool`` and the line to print then.
_needed: tuple[Callable[[], bool], str] | None = None
_watcher: threading.Thread | None = None
_before_hard_exit: Callable[[], None] | None = None
_continue_with = "the same command"
#: How often the watcher looks, after a SIGTERM.
WATCH_POLL_S = 0.5
#: The pipe Python's C-level signal handler wakes the announcer through (made once per process).
_wakeup: tuple[int, int] | None = None
_announced = False


def _announce_sigterms(read_fd: int) -> None:
    """Runs in a daemon thread: each byte is a signal number; a SIGTERM inside a block is
    announced at once (the main thread may be blocked in Ray's C code for a while)."""
    global _announced
    while True:
        try:
            data = os.read(read_fd, 512)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM in data and _active and not _announced:  # once a command
            _announced = True
            with contextlib.suppress(OSError):
                os.write(2, f"msatune: SIGTERM: stopping as on Ctrl-C; continue with: "
                            f"{_continue_with}\n".encode())


def _wake_on_signals() -> int:
    """Route Python's signal wake-ups to the announcer; returns the wakeup fd it replaced."""
    global _wakeup
    if _wakeup is None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # set_wakeup_fd's rule
        _wakeup = (read_fd, write_fd)
        threading.Thread(target=_announce_sigterms, args=(read_fd,), name="msatune-sigterm-announce",
                         daemon=True).start()
    try:
        return signal.set_wakeup_fd(_wakeup[1], warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        return -1


def _watch() -> None:
    while True:
        needed = _needed
        if _received and needed is not None and needed[0]():  # a SIGTERM to this command, not an earlier one
            if _needed is needed:  # not disarmed meanwhile (the command stopping Ray itself)
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                if _before_hard_exit is not None:
                    with contextlib.suppress(Exception):
                        _before_hard_exit()
                with contextlib.suppress(OSError):
                    os.write(2, f"msatune: stopped (SIGTERM): {needed[1]}; continue with: "
                                f"{_continue_with}\n".encode())
                os._exit(SIGTERM_EXIT)
        time.sleep(WATCH_POLL_S)


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    global _received, _watcher
    _received = True
    if _watcher is None:
        _watcher = threading.Thread(target=_watch, name="msatune-sigterm-watch", daemon=True)
        _watcher.start()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Ray Tune's: a graceful stop of the run
    else:  # Python's default, or SIGINT ignored (a background job): stop as Ctrl-C would
        raise KeyboardInterrupt


def _install() -> None:
    if threading.current_thread() is threading.main_thread():  # signal.signal's own rule
        signal.signal(signal.SIGTERM, _as_ctrl_c)


@contextlib.contextmanager
def sigterm_as_ctrl_c(before_hard_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM stops the command as Ctrl-C does; the previous handler after it.
    ``before_hard_exit`` runs before an exit at once (:func:`watch_after_sigterm`), e.g. to give
    fd 2 back to the real stderr."""
    global _active, _received, _before_hard_exit, _announced
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)  # what a library (Ray Tune) may leave installed
    _active, _received, _before_hard_exit, _announced = True, False, before_hard_exit, False
    continue_with("the same command")
    _install()
    previous_wakeup = _wake_on_signals()
    try:
        yield
    finally:
        _active, _before_hard_exit = False, None
        watch_after_sigterm(None)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(previous_wakeup)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def take_sigterm() -> bool:
    """A SIGTERM arrived while another handler held it (``ray.init``'s): inside a
    :func:`sigterm_as_ctrl_c` block it is noted (the command stops as on Ctrl-C, with SIGTERM's
    exit status) and True returned; False outside one (the caller's own handling stands)."""
    global _received
    if _active:
        _received = True
    return _active


def reclaim_sigterm() -> None:
    """After ``ray.init``: SIGTERM is Ctrl-C again, if a :func:`sigterm_as_ctrl_c` block is open."""
    if _active:
        _install()


def watch_after_sigterm(gone: Callable[[], bool] | None, message: str = "") -> None:
    """After a SIGTERM, exit at once (status 143, ``message``) if ``gone()`` turns true: what the
    graceful stop needs has ended too. ``None`` disarms it (before the command ends that itself)."""
    global _needed
    _needed = (gone, message) if gone is not None and _active else None


def continue_with(command: str) -> None:
    """How the user continues what this command was doing (``msatune resume NAME``), for the line
    an exit at once prints; "the same command" otherwise."""
    global _continue_with
    _continue_with = command


def terminated() -> bool:
    """Whether a SIGTERM arrived in the current (or last) :func:`sigterm_as_ctrl_c` block."""
    return _received
