"""A child process that must not outlive the worker that started it.

The worker runs each training in a child process and holds the site's training lock for it. If
the worker is SIGKILLed (out of memory, ``kill -9``, a supervisor's last resort), its database
session ends and the lock with it, but the child would go on: orphaned, it finishes its fit and
registers a model while a restarted worker may already train the same site. systemd and Docker
kill the whole group; a worker started by hand or by a supervisor that kills only the main
process does not. So the worker names itself in the child's environment, and the child asks the
kernel to send it SIGTERM when that parent goes (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PARENT_PID_ENV = "ADSB_TRAIN_PARENT_PID"   # set by the worker for its training child only
_PR_SET_PDEATHSIG = 1


class ParentGone(RuntimeError):
    """The process that started this one had already exited."""


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child that must end with this process."""
    return {**env, PARENT_PID_ENV: str(os.getpid())}


def die_with_parent() -> bool:
    """If started by a worker (``PARENT_PID_ENV`` set), arrange SIGTERM on its exit; returns
    whether that was arranged. Raises ``ParentGone`` if the worker exited before this call.

    The kernel sends the signal when the *thread* that forked this process exits; the worker
    forks from the thread that then waits for the child, so the two end together."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            log.warning("cannot ask to end with the worker (prctl: %s); this process would "
                        "outlive it", os.strerror(err))
            return False
    else:
        log.info("not on Linux: a training process started by a worker outlives a killed worker")
        return False
    # Set after the fork: a parent that died in between has left this process to init (or a
    # subreaper) already, and the signal will never come.
    if os.getppid() != int(expected):
        raise ParentGone(f"the worker that started this process (pid {expected}) has exited")
    return True
