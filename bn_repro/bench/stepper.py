"""`bench train`'s way into a run: the trainer's own steps, taken as Trainer.fit takes them (with
the ranks' agreement every control_every_steps), without logs, evaluations or checkpoints, and
timed over windows of their own."""

import time
from dataclasses import dataclass

import torch

from bn_repro.train.loop import Trainer, Window
from bn_repro.train.plan import Progress


@dataclass
class Stepper:
    trainer: Trainer
    progress: Progress

    def advance(self, count: int) -> None:
        """`count` training steps, with the ranks' agreement every control_every_steps as a run
        has it (its one host synchronization between logs)."""
        for _ in range(count):
            self.trainer.step(self.progress)
            if self.progress.step % self.trainer.plan.control_every_steps == 0:
                self.trainer.agree()

    def time(self, count: int) -> dict:
        """`count` steps (advance) in a window of their own, which starts once the device has
        run the steps before: Trainer.measure_window's loss, images/s and data wait."""
        trainer = self.trainer
        if trainer.compute.device.type == "cuda":
            torch.cuda.synchronize(trainer.compute.device)
        trainer.window = Window(time.perf_counter())
        self.advance(count)
        return trainer.measure_window()
