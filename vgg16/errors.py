"""The two kinds of error a run ends with in one line, each with its exit code (docs/faults.md has the table):

- `UsageError` (exit 2): what was asked cannot be done as given: a flag, a --config file, a path, a dataset or a
  checkpoint that does not fit. Fixed by changing the command.
- `RunFailure` (exit 1): the run could not go on: a full disk while saving, data that became unreadable, a lost
  row group. The command was right; the message says what to do (free space, check the data, then resume).

A preemption (vgg16/preempt.py) ends with 75; an error of ours keeps its traceback.
"""

from __future__ import annotations

import os
import re


class UsageError(Exception):
    """Bad input: a flag, a path, a dataset or a checkpoint that cannot be used as given.

    The message names what is wrong and what to do; `train_vgg16.py` prints it without a traceback.
    """


class RunFailure(Exception):
    """The run could not go on for a reason outside the command (module docstring); exit 1."""


class SaidByMainProcess(UsageError):
    """The same mistake, already said in one line by the main process: the others end without repeating it."""


def one_line(error: BaseException) -> str:
    """The user-facing line of an error. A UsageError raised in a DataLoader worker comes back re-raised with
    the worker's traceback folded into its message; its own message is that traceback's last line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        for prefix in ("vgg16.errors.UsageError: ", "vgg16.errors.RunFailure: ", "UsageError: ", "RunFailure: "):
            text = text.removeprefix(prefix)
    return text


def write_failure(error: BaseException) -> str:
    """Why a write failed, for an OSError and for safetensors' own error, which wraps the OS error in text
    ("Error while serializing: I/O error: No space left on device (os error 28)") and is no OSError."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"^Error while serializing: (I/O error: )?", "", text)


def process_label() -> str:
    """'rank 1 of 2: ' in a multi-process run (the launcher's RANK and WORLD_SIZE), '' in a single process: an
    error line from one of 16 processes must say which one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}: " if world > 1 else ""


# What a collective raises when a peer process is gone (gloo's TCP pair, NCCL/HCCL's communicator abort).
_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited or there was a network error")


def lost_a_peer(error: BaseException) -> str:
    """What the collective said when `error` is one failing because another process of the job ended (that
    process's own line says why); '' otherwise, and always in a single process, which has no peer to lose."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return ""
    return next((s for s in _PEER_LOSS if s in str(error)), "")
