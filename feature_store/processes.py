"""Process lifecycle for processes that own children (an embedded Redis, API workers): children that
die with their parent, and a SIGTERM that unwinds through `finally` blocks instead of ending the
process on the spot."""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Looked up once, in the parent: a preexec_fn runs in a forked child, where loading a library is unsafe.
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent dies, even by SIGKILL.

    Call it in the child (or as a `Popen` preexec_fn). Linux ties it to the parent *thread*: a
    child started from a thread that ends before the process would get `signum` early.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signum)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises `SystemExit(143)` the way Ctrl-C raises KeyboardInterrupt.

    SIGTERM's default action ends the process at once, skipping `finally` blocks and atexit, so
    whatever the process started (an embedded Redis) outlives it. A handler someone else installed
    (uvicorn's, a job's stop flag) is left alone, and so is every thread but the main one.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise SystemExit(128 + signum)
