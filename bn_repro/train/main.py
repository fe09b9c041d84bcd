"""`bn-repro train`'s entry point: Hydra composes the config, train() runs it (run.py), and the
outcome becomes the exit status. An error is said in one line; a requeue and a user's stop
have exit statuses of their own."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bn_repro.compose import CONFIG_DIR, register, to_object, validate
from bn_repro.errors import UserError, explain_os_error
from bn_repro.train.run import train
from bn_repro.train.signals import (
    INTERRUPTED_EXIT_CODE,
    ask_to_be_requeued,
    exit_stopped,
    stop_on_signals,
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    register()  # a submitit job unpickles this function in a fresh process
    stops: list[int] = []
    try:
        validate(cfg)
        with stop_on_signals(stops):
            summary = train(to_object(cfg), stops)
    except (UserError, OSError) as error:
        if isinstance(error, OSError) and error.filename is None:
            raise  # no path the user could fix: the traceback says where it came from
        message = explain_os_error(error) if isinstance(error, OSError) else error
        print(f"bn-repro train: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return  # this job fails; the sweep's other jobs go on
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, no checkpoint
        print(
            "bn-repro train: interrupted; the same command resumes from the last checkpoint",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED_EXIT_CODE)
    if summary["status"] == "preempted":
        ask_to_be_requeued(stops)
    elif summary["status"] == "stopped":
        exit_stopped()
