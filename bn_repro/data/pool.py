"""Process pools whose workers die with their parent. A worker waits on its task queue for ever:
SIGKILL `prepare` or `make-mini` and, without this, every worker (about 430 MB each for
`prepare`) lives on, reparented to init."""

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def worker_pool(workers: int) -> ProcessPoolExecutor:
    # fork: the workers' parent is this process (under forkserver it would be the server), which
    # is whom the death signal and the check in _die_with_parent follow.
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def _die_with_parent(parent: int) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)
