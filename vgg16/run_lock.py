"""One run per output folder: the main process holds a lock on `--output-dir` for the run's lifetime.

filelock's FileLock is an flock(2) lock, which the kernel releases when its process ends however it ends (a
SIGKILL, a lost node's NFS lease expiring), so a lock is never left behind by a dead run. Where the filesystem
has no flock, filelock falls back to its soft (file-exists) lock. Who holds it is written beside it, since the
lock file itself is truncated by every attempt to take it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from .errors import SaidByMainProcess, UsageError

LOCK_FILE = ".run.lock"
OWNER_FILE = ".run.owner.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(output_dir: Path) -> Optional[dict]:
    try:
        return json.loads((output_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(owner: Optional[dict]) -> str:
    if not owner:
        return "another process (its owner file is missing)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"process {owner.get('pid')} on {owner.get('host')} (started {started}: {owner.get('command', '?')})"


class RunLock:
    """Held from `acquire` to `release`; `note` says when a previous run's lock was taken over."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.lock = FileLock(str(self.output_dir / LOCK_FILE), timeout=0)
        self.note: Optional[str] = None

    def acquire(self) -> "RunLock":
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise UsageError(f"--output-dir {self.output_dir} is in use by {_describe(_read_owner(self.output_dir))}: "
                             "wait for that run to end or stop it, or choose another --output-dir") from None
        previous = _read_owner(self.output_dir)
        host = socket.gethostname()
        if previous and previous.get("pid") is not None:
            gone = "is no longer running" if previous.get("host") == host and not _alive(int(previous["pid"])) \
                else "no longer holds it"
            self.note = (f"took over {self.output_dir}'s lock from {_describe(previous)}, which {gone} "
                         "(it ended without releasing the lock)")
        owner = {"pid": os.getpid(), "host": host, "started": time.time(), "command": " ".join(sys.argv)}
        tmp = self.output_dir / (OWNER_FILE + ".tmp")
        tmp.write_text(json.dumps(owner) + "\n")
        tmp.replace(self.output_dir / OWNER_FILE)
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            (self.output_dir / OWNER_FILE).unlink(missing_ok=True)
            self.lock.release()


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--output-dir {path} is not writable ({e.strerror}): choose another folder") from None


def take_output_dir(accelerator, output_dir: Path) -> Optional[RunLock]:
    """The main process checks --output-dir and locks it for this run; the others receive its error, so a folder
    in use stops every process with one line (the main process's)."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            check_output_dir(output_dir)
            lock = RunLock(output_dir).acquire()
        except UsageError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise UsageError(error) if accelerator.is_main_process else SaidByMainProcess(error)
    return lock
