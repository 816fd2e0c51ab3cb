"""A signal saves and stops: SIGTERM (SLURM's and Kubernetes' notice before a kill), SIGUSR1 (SLURM's
`--signal=USR1@120` warning) and a first Ctrl-C only set a flag; the epoch loop checks it at every optimizer-step
boundary, where the training state is well defined (StopAgreement: the same step on every process), writes a
checkpoint there and ends with EXIT_PREEMPTED.

The handler never saves: a save from inside a handler could run in the middle of an optimizer step or a
collective (Lightning moved its SLURM save out of the handler for this reason, Lightning PR #21407).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the run stopped on a signal after
# writing a checkpoint, and `--resume auto` continues it exactly.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# A second SIGINT this soon after the first is the same Ctrl-C forwarded by the launcher (torchelastic passes the
# signal it gets on to its workers, which had it from the terminal already), not a second press.
SECOND_PRESS_AFTER_S = 1.0


class Preempted(Exception):
    """Raised once the stop checkpoint is written; `train_vgg16.py` turns it into one line and EXIT_PREEMPTED."""

    def __init__(self, signal_name: str, global_step: int, checkpoint: str):
        self.signal_name, self.global_step, self.checkpoint = signal_name, global_step, checkpoint
        super().__init__(f"stopping at step {global_step} on {signal_name}: checkpoint {checkpoint}; "
                         "resume with --resume auto")


class StopRequest:
    """The flag the signal handlers set, read at step boundaries. A second Ctrl-C raises KeyboardInterrupt at once.

    Processes forked after `install` (DataLoader workers) inherit the handler; there it does nothing, so a signal
    sent to every process of a job (SLURM signals them all) does not kill a loader worker under the main process.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._received_at = 0.0
        self._owner = os.getpid()
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:
            return  # a loader worker: its main process decides
        now = time.monotonic()
        if self.signal_name is None:
            self.signal_name, self._received_at = signal.Signals(signum).name, now
        elif signum == signal.SIGINT and now - self._received_at > SECOND_PRESS_AFTER_S:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class StopAgreement:
    """Every process stops at the same step. The flags are combined by an all-reduce (max) of a CPU integer over a
    gloo group, started at one step without waiting and read at the next: it runs while that step computes, so the
    check neither waits for the accelerator's queue (a device tensor would need a host sync) nor holds the
    processes together at every step. The stop therefore comes one step after the signal. One process needs no
    collective."""

    def __init__(self, accelerator, request: StopRequest):
        self.request = request
        self.group = None
        self.collective = accelerator.num_processes > 1
        self.pending: Optional[tuple] = None
        if self.collective and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # every process calls this, in the same order

    def stop_now(self) -> bool:
        """Whether any process had been asked to stop by the previous call; the same answer on every process
        (each calls this at the same steps)."""
        if not self.collective:
            return self.request.requested
        stop = False
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            stop = bool(flag.item())
        if stop:
            self.pending = None
            if not self.request.requested:
                self.request.signal_name = "a signal to another process"
            return True
        flag = torch.tensor([int(self.request.requested)], dtype=torch.int32)
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return False

    def finish(self) -> None:
        """Wait for the all-reduce still in flight: every process started it, and a process that exits with gloo
        work outstanding can abort in the C++ runtime instead of exiting."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None
