"""What a run that a signal stopped does once its checkpoint is written: it asks to be started
again, and started again it resumes from that checkpoint (main.resume)."""

import os
import signal
import sys

# EX_TEMPFAIL: the run checkpointed on a signal; run the same command again to resume.
REQUEUE_EXIT_CODE = 75


def ask_to_be_requeued(signals: list[int]) -> None:
    """Hand each signal that stopped the run to the handler the process had before training,
    then exit with REQUEUE_EXIT_CODE; in a submitit job, ranks other than 0 return instead.

    In a hydra/launcher=slurm job those handlers are submitit's. On its USR2 (SLURM's warning
    before the time limit, or of a preemption) rank 0 saves the job for resubmission as it was
    submitted (the same sweep job, so the same run_dir), counts a timeout against
    max_num_timeout, runs `scontrol requeue` and exits; past max_num_timeout it raises, and the
    job fails with the reason. On SIGTERM it only logs: SLURM itself requeues the job (scontrol
    requeue, a preemption) or ends it. A submitit job's result is its rank 0's: another rank that
    exited without one would leave the sweep waiting for it.
    """
    for signum in dict.fromkeys(signals):
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)
    if "SUBMITIT_EXECUTOR" in os.environ:
        from submitit import JobEnvironment

        if JobEnvironment().global_rank != 0:
            return
    sys.exit(REQUEUE_EXIT_CODE)
