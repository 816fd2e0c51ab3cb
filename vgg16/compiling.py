"""--compile: the model compiled in place, with its input's conversion and normalisation inside the graph.

Why not Accelerate's `dynamo_backend`: it compiles the DDP wrapper (`torch.compile(DDP(model))`), whose forward
dynamo cannot trace (`DistributedDataParallel._inside_ddp_forward` is marked skip, and DDP's logger breaks the
graph), so every step of a multi-process run crossed graph breaks; and the batch's uint8 -> float conversion and
normalisation ran outside the graph, where inductor cannot fuse them into the first convolution's input. Here
`nn.Module.compile()` compiles the model itself before `accelerator.prepare` wraps it: DDP then runs its forward
eagerly around one compiled graph, which dynamo's DDPOptimizer splits at DDP's gradient buckets (so the
all-reduce still overlaps the backward). The state dict keeps its keys (no `_orig_mod.` prefix), so checkpoints
and exports are the same with and without --compile; a deep copy (the EMA of the weights) is not compiled
(`nn.Module.__getstate__` leaves the compiled call out) and runs its own weights.
"""

from __future__ import annotations

from types import MethodType
from typing import Callable

import torch
from torch import nn


def as_loaded(images: torch.Tensor) -> torch.Tensor:
    """What the batches go through once the model normalises its own input: nothing."""
    return images


def normalise_inside(model: nn.Module, normalise: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Make `model` take the loader's uint8 NCHW batches and normalise them itself, so that a compiled model holds
    that work in its graph; return what the batches now go through before the model (`as_loaded`). The forward is
    the model's own, replaced on this instance (as Accelerate replaces it for autocast): the weights and their
    names do not change, and a deep copy (the EMA of the weights) gets the same forward bound to itself."""
    original = type(model).forward

    def forward(module, images):
        return original(module, normalise(images))

    model.forward = MethodType(forward, model)
    return as_loaded


def compile_options(backend: str = "inductor", mode: str = "default") -> dict:
    """torch.compile's arguments for --compile-backend and --compile-mode ("default" is mode None)."""
    return {"backend": backend, "mode": None if mode == "default" else mode}


def compile_with_input(model: nn.Module, normalise: Callable, *, backend: str = "inductor",
                       mode: str = "default") -> Callable:
    """Normalisation into the model (normalise_inside), then `model.compile(...)`; before `accelerator.prepare`.
    Returns what the batches go through before the model from now on (`as_loaded`)."""
    batch_input = normalise_inside(model, normalise)
    model.compile(**compile_options(backend, mode))
    return batch_input


def compile_counts() -> dict:
    """Graphs dynamo compiled in this process so far and the graph breaks it met (torch._dynamo's own counters):
    training's graph, validation's, and one more for a smaller last batch, when nothing recompiles."""
    from torch._dynamo.utils import counters

    return {"compiled_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def compile_note(counts: dict) -> str:
    return (f"torch.compile so far: {counts['compiled_graphs']} graph(s) compiled, {counts['graph_breaks']} graph "
            "break(s)")
