"""What a run that a signal stopped does once its checkpoint is written: preempted, it asks to be
started again, and started again it resumes from that checkpoint (main.resume); stopped by its
user (Ctrl-C), it only says so in its exit status."""

import os
import signal
import sys

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
