"""The Accelerator for a run: precision, loss scaling, loader settings, and the checks that the launch is the one
the user asked for."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, GradScalerKwargs, InitProcessGroupKwargs, ProjectConfiguration,
                               gather_object, parse_flag_from_env)

from .config import TrainConfig
from .elastic import follow_the_launcher, init_restarted_group
from .errors import UsageError

# --device names of the old scripts -> torch device types.
DEVICE_TYPES = {"cpu": "cpu", "gpu": "cuda", "npu": "npu"}
DEVICE_HINTS = {
    "gpu": "no CUDA device is visible to this process (check nvidia-smi and CUDA_VISIBLE_DEVICES), or the launch "
    "asked for the CPU (use_cpu / --cpu); launch with accelerate_configs/gpu_1p.yaml or gpu_8p.yaml",
    "npu": "torch_npu is not installed or no NPU is visible (check npu-smi info and ASCEND_RT_VISIBLE_DEVICES; "
    "pip install -r requirements-npu.txt); launch with accelerate_configs/npu_1p.yaml or npu_8p.yaml",
    "cpu": "the launch put the run on an accelerator; add --cpu to accelerate launch (or use_cpu: true in the config)",
}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (honest timings); nothing to wait for on CPU. The device module's own
    synchronize (torch.cuda, torch.npu) first: torch.accelerator's works for an out-of-tree backend only as far as
    its registration goes (pytorch/pytorch#196299)."""
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    (module.synchronize if hasattr(module, "synchronize") else torch.accelerator.synchronize)()


def dataloader_configuration() -> DataLoaderConfiguration:
    """Seedable sampler: the shuffle order depends on (seed, epoch) only, so a resumed run sees the same order.
    non_blocking: host-to-device copies overlap compute (the loaders pin memory). Without it each batch's copy
    waits for the queued step: a host sync per batch (docs/performance.md has what it cost on an H100)."""
    return DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True)


def visible_accelerators() -> dict:
    """{'cuda': n} or {'npu': n} for the devices this process can see (CUDA_VISIBLE_DEVICES and
    ASCEND_RT_VISIBLE_DEVICES applied), from torch.accelerator, which knows torch_npu's devices once it is loaded
    (backend.py); empty on a machine with neither."""
    if not torch.accelerator.is_available():
        return {}
    return {torch.accelerator.current_accelerator().type: torch.accelerator.device_count()}


def check_devices(local_processes: int, use_cpu: bool, devices: dict) -> None:
    """Stop before the process group forms when a launch for accelerators cannot run here: no GPU or NPU at all
    (a gpu_8p/npu_8p config on the wrong machine), or more processes on this machine than devices. Accelerate
    itself falls back to N separate CPU runs in the first case and fails in set_device in the second."""
    if use_cpu or local_processes < 2:
        return
    if not devices:
        raise UsageError(f"{local_processes} processes were launched on this machine for GPUs or NPUs, but it has "
                         "none visible (nvidia-smi or npu-smi info; CUDA_VISIBLE_DEVICES, ASCEND_RT_VISIBLE_DEVICES). "
                         "To train on CPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..., "
                         "or accelerate_configs/cpu.yaml")
    kind, count = next(iter(devices.items()))
    if local_processes > count:
        kind = {"cuda": "GPU"}.get(kind, kind.upper())
        raise UsageError(f"{local_processes} processes were launched on this machine, but it has {count} {kind}(s) "
                         f"visible: launch at most {count} per machine (num_processes, with gpu_ids in the config)")


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), parse_flag_from_env("ACCELERATE_USE_CPU"),
                  visible_accelerators())
    handlers = []
    if cfg.dist_timeout is not None:
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.dist_timeout)))
    if cfg.loss_scale is not None:
        # The seed's static loss scale: start at N and never grow. Unlike apex's static mode, an overflow still
        # skips the step (and halves the scale) instead of applying inf gradients.
        handlers.append(GradScalerKwargs(init_scale=cfg.loss_scale, growth_interval=2**31 - 1))
    trackers = [t.strip() for t in cfg.report_to.split(",") if t.strip() and t.strip() != "none"]
    ascend = ascend_setup(cfg, torch.npu, os.environ) if "npu" in visible_accelerators() else []  # type: ignore
    follow_the_launcher()  # a worker ends with its launcher (elastic.py)
    # A restart by the launcher forms its process group itself, away from the first attempt's keys (elastic.py).
    init_restarted_group(timedelta(minutes=cfg.dist_timeout) if cfg.dist_timeout is not None else None)
    try:
        accelerator = Accelerator(
            # Only what was asked: log_with=None never picks up an installed tracker by itself.
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                                logging_dir=os.path.join(cfg.output_dir, "logs")),
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            dataloader_config=dataloader_configuration(),
            kwargs_handlers=handlers,
            step_scheduler_with_optimizer=False,
        )
    except ValueError as e:
        message = str(e).splitlines()[0]
        if "fp16" in message:
            message += "; on CPU use --mixed-precision bf16 or no"
        raise UsageError(message) from None
    check_launch(cfg, accelerator)
    if ascend:
        accelerator.print("note: NPU settings: " + "; ".join(ascend), flush=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return accelerator


# HCCL's documented ranges, in seconds (CANN's environment variable reference).
HCCL_CONNECT_RANGE, HCCL_EXEC_RANGE = (120, 7200), (68, 17340)


def ascend_setup(cfg: TrainConfig, npu, environ) -> list:
    """What an NPU run sets before its process group forms, and each said in words: torch_npu's operator
    compilation (`--npu-jit-compile`, off by default: the ModelZoo scripts turn it off, and on 910A-class chips
    torch_npu would compile every operator just in time), its private tensor layouts (`--npu-internal-format`),
    and HCCL's own connect and execution timeouts from --dist-timeout, which HCCL reads from the environment when
    the group forms (a value the user set stays)."""
    said = []
    npu.set_compile_mode(jit_compile=cfg.npu_jit_compile)
    said.append(f"jit_compile {'on' if cfg.npu_jit_compile else 'off'}")
    if cfg.npu_internal_format != "default":
        npu.config.allow_internal_format = cfg.npu_internal_format == "on"
    said.append(f"allow_internal_format {npu.config.allow_internal_format}"
                + (" (torch_npu's default)" if cfg.npu_internal_format == "default" else ""))
    if cfg.dist_timeout is not None:
        seconds = int(cfg.dist_timeout * 60)
        for name, (low, high) in (("HCCL_CONNECT_TIMEOUT", HCCL_CONNECT_RANGE), ("HCCL_EXEC_TIMEOUT", HCCL_EXEC_RANGE)):
            if name in environ:
                said.append(f"{name} {environ[name]} s (yours)")
                continue
            environ[name] = str(min(max(seconds, low), high))
            said.append(f"{name} {environ[name]} s (from --dist-timeout)")
    return said


def check_launch(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """Stop when the launch is not what was asked: wrong device, or a world smaller than the launcher's."""
    if cfg.device and accelerator.device.type != DEVICE_TYPES[cfg.device]:
        raise UsageError(f"--device {cfg.device}, but this launch runs on {accelerator.device.type}: "
                         f"{DEVICE_HINTS[cfg.device]}")
    if cfg.compile and accelerator.device.type == "npu":
        raise UsageError("--compile: torch.compile is not supported for NPU training: drop it")
    if cfg.gpu_decode and accelerator.device.type != "cuda":
        raise UsageError(f"--gpu-decode uses nvJPEG on NVIDIA GPUs; this run is on {accelerator.device.type}: drop it")
    if accelerator.device.type == "npu" and accelerator.mixed_precision == "bf16":
        # Accelerate accepts bf16 on any NPU, but the 910A family has no bf16 units. torch.npu exists once
        # Accelerate has imported torch_npu; naming the chip needs this one device-specific call.
        name = torch.npu.get_device_name(accelerator.device)  # type: ignore[attr-defined]
        if not npu_supports_bf16(name):
            raise UsageError(f"{name} has no bf16: use --mixed-precision fp16 (accelerate_configs/npu_*.yaml do)")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # Seen with `accelerate launch` + a YAML that says use_cpu and MULTI_GPU: N processes that each train
        # alone. N independent models instead of one must not pass silently.
        raise UsageError(f"launched as {launched} processes but the process group has {accelerator.num_processes}: "
                         "the processes would train separate models. On CPU launch with "
                         "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`")


def npu_supports_bf16(device_name: str) -> bool:
    """Ascend 910B/910C (names Ascend910B*, Ascend910_93*) have bf16; the first 910s (910A, 910ProA,
    910PremiumA, 910ProB) and the 310 series do not."""
    name = device_name.replace(" ", "")
    return name.startswith(("Ascend910B", "Ascend910_9"))


def assert_processes_agree(accelerator: Accelerator, what: str, value) -> None:
    """Stop if the processes hold different values (e.g. the epoch and step a resume starts at)."""
    values = gather_object([value])
    if any(v != values[0] for v in values):
        raise UsageError(f"the processes disagree on {what}: {values}; are they reading the same checkpoint?")


def use_cpu_cores(accelerator: Accelerator):
    """On CPU, give each process its share of the cores; return a note when that changed the thread count.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves training speed on a 2-core
    machine with one process (docs/performance.md). We cannot tell that 1
    from a user's own choice, so `--num_cpu_threads_per_process 1` is overridden too; any other value is kept.
    """
    if accelerator.device.type != "cpu":
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    share = max(1, usable_cpus() // max(1, local))
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ
    if launched_by_accelerate and os.environ.get("OMP_NUM_THREADS") == "1" and torch.get_num_threads() < share:
        torch.set_num_threads(share)
        return (f"accelerate launch set OMP_NUM_THREADS=1; using {share} CPU threads per process "
                "(this machine's cores / local processes)")
    return None


def device_name(accelerator: Accelerator) -> str:
    """'NVIDIA H100 80GB HBM3', 'Ascend910B2', or 'CPU' (torch.cuda / torch.npu, looked up by device type)."""
    module = getattr(torch, accelerator.device.type, None)
    if accelerator.device.type != "cpu" and hasattr(module, "get_device_name"):
        return module.get_device_name(accelerator.device)
    return "CPU"


def launch_facts(accelerator: Accelerator) -> dict:
    """What results.json says of the launch: processes, precision, device and the versions that ran it."""
    import accelerate

    return {"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": accelerator.device.type, "device_name": device_name(accelerator), "torch": torch.__version__,
            "accelerate": accelerate.__version__}


def default_workers(requested, num_processes: int) -> int:
    """--workers, or the CPUs this process may use shared among this machine's processes: on a node of 8 GPUs and
    128 cores, 16 workers each (JPEG decoding needs them all to keep a fast GPU fed)."""
    if requested is not None:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))  # set by the launcher on multi-node runs
    return max(0, usable_cpus() // max(1, local))


def usable_cpus() -> int:
    """The CPUs this process may run on: a SLURM job's or a container's share (its affinity mask), not the
    whole machine's count that os.cpu_count() gives."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1
