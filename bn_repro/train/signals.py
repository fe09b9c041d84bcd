"""How a signal stops a run and what the process does then. SIGTERM, SIGUSR1 and SIGUSR2
(preemption, SLURM's warning before the time limit) ask for a checkpoint and a stop at the next
control point, then a requeue: started again, the run resumes from that checkpoint. SIGINT
(Ctrl-C) stops the same way without the requeue, and only says so in the exit status."""

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# How a stop signal ends a run. Ranks that got different ones agree on the larger (agree): a
# user's Ctrl-C stops for good a run that a preemption alone would have had requeued.
PREEMPTED, STOPPED = 1, 2
STOP_STATUS = {PREEMPTED: "preempted", STOPPED: "stopped"}

# EX_TEMPFAIL: the run checkpointed on a signal; run the same command again to resume.
REQUEUE_EXIT_CODE = 75
# 128 + SIGINT, as a shell reports a Ctrl-C: stopped by its user, with a checkpoint or (a
# second Ctrl-C) at once; not to be requeued.
INTERRUPTED_EXIT_CODE = 130


def ask_to_be_requeued(signals: list[int]) -> None:
    """Hand each signal that stopped the run to the handler the process had before training,
    then exit with REQUEUE_EXIT_CODE; in a submitit job, ranks other than 0 return instead.

    In a hydra/launcher=slurm job those handlers are submitit's. On its USR2 (SLURM's warning
    before the time limit, or of a preemption) rank 0 saves the job for resubmission as it was
    submitted (the same sweep job, so the same run_dir), counts a timeout against
    max_num_timeout, runs `scontrol requeue` and exits; past max_num_timeout it raises, and the
    job fails with the reason. On SIGTERM it only logs: SLURM itself requeues the job (scontrol
    requeue, a preemption) or ends it.
    """
    for signum in dict.fromkeys(signals):
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)
    if not other_submitit_rank():
        sys.exit(REQUEUE_EXIT_CODE)


def exit_stopped() -> None:
    """A run its user stopped (Ctrl-C) exits with INTERRUPTED_EXIT_CODE, which ends a sweep of
    the local launcher too; in a submitit job, ranks other than 0 return instead."""
    if not other_submitit_rank():
        sys.exit(INTERRUPTED_EXIT_CODE)


def other_submitit_rank() -> bool:
    """Whether this is a submitit job's rank other than 0, which must return: its result is
    rank 0's, and a rank that exited without one would leave the sweep waiting for it."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    from submitit import JobEnvironment

    return JobEnvironment().global_rank != 0


def stop_code(signals: list) -> int:
    if signal.SIGINT in signals:
        return STOPPED
    return PREEMPTED if signals else 0


@contextmanager
def stop_on_signals(received: list) -> Iterator[None]:
    """SIGTERM, SIGUSR1 or SIGUSR2 (SLURM's warning before the time limit: the usual one, and
    submitit's) asks for a checkpoint and a stop at the next control point, then a requeue;
    SIGINT (Ctrl-C) for the same without the requeue, and a second Ctrl-C interrupts at once
    (KeyboardInterrupt). The handlers from before come back afterwards
    (requeue.ask_to_be_requeued hands them the signals). Loader workers forked meanwhile inherit
    the handler, which ignores the Ctrl-C that reaches them too: they stop with the trainer."""
    trainer = os.getpid()

    def on_signal(signum: int, frame) -> None:
        if os.getpid() != trainer:
            return
        if signum == signal.SIGINT:
            if signum in received:
                raise KeyboardInterrupt
            # straight to the terminal: logging is not safe in a signal handler
            os.write(2, b"\nCtrl-C: stopping with a checkpoint (Ctrl-C again: at once, without)\n")
        received.append(signum)

    handled = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
