"""Restarts by the launcher (`accelerate launch --max_restarts N`): a fresh process group for each attempt.

Why our own: `accelerate launch` uses torchelastic's static rendezvous, whose agent keeps one TCPStore for the
whole job and hands it to every attempt (TORCHELASTIC_USE_AGENT_STORE). The keys the first attempt's process group
wrote there (each rank's gloo address, the init barrier's counter) are still there when the workers restart, under
the same names, so a restarted rank can read a dead peer's address ("Gloo connectFullMesh failed ... Connection
refused") or pass the init barrier early and wait for ever. This is the static-rendezvous form of
pytorch/pytorch#135712 (fixed there for the c10d rendezvous only). A restarted worker therefore forms the group
itself, on the same store under a prefix named by the attempt, before Accelerate would; Accelerate then uses it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from datetime import timedelta
from typing import Optional

import torch.distributed as dist


def restart_count() -> int:
    """How many times the launcher has restarted this job's processes (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_restarted_group(timeout: Optional[timedelta] = None) -> bool:
    """On a restarted attempt that shares the agent's store, form the default process group under a prefix of
    this attempt's own; True when it did. The first attempt is left to Accelerate, as before."""
    attempt = restart_count()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return False
    timeout = timeout or timedelta(minutes=30)  # torch's default for gloo and the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    # backend=None: torch's default per device type (gloo for CPU tensors, nccl for CUDA, hccl for NPU once
    # torch_npu has registered it), which covers what Accelerate would have picked.
    dist.init_process_group(backend=None, store=dist.PrefixStore(f"vgg16/attempt_{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return True


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_command() -> bytes:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def follow_the_launcher() -> bool:
    """Ask Linux to end this process when its launcher dies (prctl PR_SET_PDEATHSIG); True when set.

    torchelastic starts each worker in a session of its own, so a launcher killed with SIGKILL (the OOM killer, a
    scheduler's hard kill, a lost SSH session) leaves its workers running with nobody to watch or restart them:
    they hold the devices, and their peers on other machines cannot tell that this machine is gone. With this,
    killing a machine's launcher ends its workers too, and the peers' next collective fails at once.
    (Linux sends the signal when the *thread* that started the process ends; torchelastic starts workers from its
    main thread, which lives as long as the launcher.)
    `accelerate launch --num_processes 1` waits on its one process without passing signals on: killed with
    SIGTERM, it too would leave the run going on its own. The SIGTERM is then the run's stop signal (preempt.py):
    it saves at the next step and stops. Only under a launcher: a run started from a shell must outlive it."""
    if not (os.environ.get("TORCHELASTIC_RUN_ID") or b"accelerate" in _parent_command()) \
            or not sys.platform.startswith("linux"):
        return False
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != launcher:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True
