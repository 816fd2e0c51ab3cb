"""`python -m vgg16.tools.benchmark train`: our training step (Accelerate's prepare, the engine's train_one_epoch,
the trainer's optimizer) against a plain PyTorch loop, same model, batch and device, in the same run; with
`--stop-check`, ours again with the preemption check the trainer makes after every step."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..errors import one_line

# Dense peak TFLOP/s of known devices in 16-bit (for FLOP utilisation); add yours with --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "Ascend910B": 313.0, "Ascend910": 256.0}


def _train_flops_per_image(model: nn.Module, image_size: int) -> float:
    """Forward FLOPs counted by torch (2 per multiply-add) x 3 for forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    return 3.0 * counter.get_total_flops()


def side_order(round_index: int) -> tuple:
    """Which side runs first: alternate by round. On a 2-core machine the second of two back-to-back runs was
    measurably slower whichever side it was (allocator and cache state), which always charged it to ours."""
    return ("baseline", "ours") if round_index % 2 == 0 else ("ours", "baseline")


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def bench_train(args) -> list:
    """One result per --batch-size; a batch the device has no memory for ends the list with an "oom" entry."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..compiling import compile_options, compile_with_input
    from ..data.pipeline import IMAGENET_MEAN, IMAGENET_STD, SyntheticImages
    from ..engine import EpochPlan, Normalizer, StepLogger, Trainee, normalised_batches, train_one_epoch
    from ..launch import dataloader_configuration, device_name, synchronize
    from ..metrics import ThroughputMeter
    from ..model import build_model, head_for
    from ..optim import build_optimizer, use_fused
    from ..preempt import StopAgreement, StopRequest

    # The trainer's loader settings (non-blocking copies), so what is measured is our step and not a copy that
    # waits for the queued step.
    accelerator = Accelerator(mixed_precision=args.mixed_precision, dataloader_config=dataloader_configuration())
    device = accelerator.device
    torch.backends.cudnn.benchmark = True  # as the trainer sets it (without --deterministic); both sides get it
    sync = lambda: synchronize(device)  # noqa: E731
    head = head_for(args.image_size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    warmup = 3 if not args.compile else 5  # compiling happens in the first steps
    steps = args.steps + warmup

    def fresh_model():
        if args.compile:  # each model compiles anew: dynamo's cache per code object holds only a few models
            torch._dynamo.reset()
        set_seed(0)
        return build_model(args.arch, 1000, head=head).to(memory_format=memory_format)

    # --stop-check: ours again with the preemption check the trainer makes after every step (vgg16/preempt.py).
    stop = StopAgreement(accelerator, StopRequest()) if args.stop_check else None

    def ours_once(batch_size: int, check: bool = False) -> float:
        """The trainer's own step: Accelerate's prepare, the engine's train_one_epoch, its optimizer choice."""
        model = fresh_model()
        normalize = Normalizer(IMAGENET_MEAN, IMAGENET_STD, device, channels_last=args.channels_last)
        if args.compile:  # as the trainer compiles (vgg16/compiling.py): in place, normalisation inside
            normalize = compile_with_input(model, normalize, backend=args.compile_backend, mode=args.compile_mode)
        optimizer = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                    fused=use_fused(device.type, accelerator.mixed_precision))
        data = SyntheticImages(steps * batch_size, image_size=args.image_size, num_classes=1000, seed=0)
        # No workers: synthetic batches cost nothing to make, and workers would only compete with the step for the
        # CPU, which the plain loop (no loader at all) does not share.
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, drop_last=True, num_workers=0,
                                             pin_memory=device.type != "cpu")
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        meter = ThroughputMeter(sync, warmup_steps=warmup)
        plan = EpochPlan(0, 1, steps, print_freq=10**9)
        train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()),
                        normalised_batches(loader, tuple, normalize), accelerator, plan,
                        StepLogger(accelerator, plan, meter, log=lambda m: None),
                        after_step=(lambda *_: stop.stop_now()) if check else None)
        accelerator.free_memory()
        return meter.fps

    def plain_once(batch_size: int) -> float:
        """The loop a user writes without us: float batches already normalised on the device, torch's SGD."""
        model = fresh_model().to(device)
        if args.compile:
            model = torch.compile(model, **compile_options(args.compile_backend, args.compile_mode))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        x = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device).contiguous(
            memory_format=memory_format)
        y = torch.randint(0, 1000, (batch_size,), device=device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        model.train()
        for i in range(steps):
            if i == warmup:
                sync()
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return args.steps * batch_size / (time.perf_counter() - start)

    flops = _train_flops_per_image(build_model(args.arch, 1000, head=head), args.image_size)
    name = device_name(accelerator)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name.replace(" ", "")), None)
    setting = accelerator.mixed_precision + (" + channels_last" if args.channels_last else "") + \
        (f" + compile ({args.compile_mode}" + ("" if args.compile_backend == "inductor" else f", {args.compile_backend}")
         + ")" if args.compile else "")
    results = []
    for batch_size in args.batch_size:
        what = f"training step, {args.arch} {args.image_size} px, batch {batch_size}, {setting}"
        ours, plain, checked = 0.0, 0.0, 0.0
        try:
            for r in range(args.rounds):
                sides = side_order(r) if stop is None else ("baseline", "ours", "checked")[r % 3:] + \
                    ("baseline", "ours", "checked")[:r % 3]  # each side first in turn
                for side in sides:
                    if side == "baseline":
                        plain = max(plain, plain_once(batch_size))
                    elif side == "ours":
                        ours = max(ours, ours_once(batch_size))
                    else:
                        checked = max(checked, ours_once(batch_size, check=True))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_out_of_memory(e):
                raise
            accelerator.free_memory()
            results.append({"what": what, "batch_size": batch_size, "setting": setting, "device": name,
                            "oom": True, "error": one_line(e)[:200]})
            break  # larger batches will not fit either
        result = {"what": what, "batch_size": batch_size, "setting": setting, "images_per_s": ours,
                  "baseline_images_per_s": plain, "ratio": ours / plain, "device": name,
                  "gflop_per_image": flops / 1e9, "baseline": "plain PyTorch loop, same model and batch, torch's SGD"}
        if stop is not None:
            calls = 200
            started = time.perf_counter()
            for _ in range(calls):
                stop.stop_now()
            check_s = (time.perf_counter() - started) / calls
            result.update(with_stop_check_images_per_s=checked, stop_check_ratio=checked / ours,
                          stop_check_us=check_s * 1e6, stop_check_share_of_step=check_s * ours / batch_size,
                          processes=accelerator.num_processes)
        if peak:
            result["flop_utilisation"] = ours * flops / (peak * 1e12)
            result["peak_tflops"] = peak
        results.append(result)
        accelerator.free_memory()  # also empties the device's cache (Accelerate's clear_device_cache), any backend
    if stop is not None:
        stop.finish()
    accelerator.end_training()  # destroys the process group, which gloo needs before the interpreter ends
    return results
