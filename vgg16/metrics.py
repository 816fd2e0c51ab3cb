"""Top-k accuracy as an `evaluate.Metric`, and the throughput meter behind the FPS figure."""

from __future__ import annotations

import time
from typing import Callable, Optional

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    """Top-1 and top-5 accuracy in percent, like the old scripts' Acc@1/Acc@5.

    Defined here because `evaluate.load("accuracy")` fetches its script from the hub and fails offline; and the
    hub's accuracy metric has no top-k. Predictions are each sample's class indices ranked by score.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Top-k classification accuracy, in percent.",
            citation="",
            inputs_description="predictions: per sample, class indices sorted by descending score; "
            "references: the true class index.",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("int64")),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, ks=(1, 5)) -> dict:
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        truth = np.asarray(references, dtype=np.int64)
        hits = ranked == truth[:, None]
        out = {f"acc{k}": float(100.0 * hits[:, :k].any(axis=1).mean()) if len(truth) else 0.0 for k in ks}
        out["count"] = int(len(truth))
        return out


def new_topk_metric() -> TopKAccuracy:
    # In memory: no cache files, so concurrent runs on one machine cannot collide on evaluate's arrow files.
    return TopKAccuracy(keep_in_memory=True)


class ThroughputMeter:
    """Images per second over optimizer steps, the device synchronised at every reading.

    Each epoch's first `warmup_steps` steps are not timed (loader start, allocator and kernel autotuning); without
    synchronisation an asynchronous device would report the rate at which steps were queued, not run.
    """

    def __init__(self, synchronize: Callable[[], None], warmup_steps: int = 5):
        self.synchronize = synchronize
        self.warmup_steps = warmup_steps
        self.total_images = 0
        self.total_seconds = 0.0
        self.epoch_fps = 0.0
        self._reset_epoch(warmup_steps)

    def _reset_epoch(self, warmup: int) -> None:
        self._warmup = warmup
        self._steps = 0
        self._start: Optional[float] = None
        self._images = 0
        self._window_start: Optional[float] = None
        self._window_images = 0

    def _now(self) -> float:
        self.synchronize()
        return time.perf_counter()

    def begin_epoch(self, steps_in_epoch: int) -> None:
        # Short epochs (tests, --stop-step-num) keep at least half their steps timed.
        self._reset_epoch(min(self.warmup_steps, steps_in_epoch // 2))
        if self._warmup == 0:
            self._start = self._window_start = self._now()

    def step(self, images: int) -> None:
        """Call after each optimizer step with the images it consumed on all processes."""
        self._steps += 1
        if self._start is None:
            if self._steps >= self._warmup:
                self._start = self._window_start = self._now()
            return
        self._images += images
        self._window_images += images

    def window_fps(self) -> Optional[float]:
        """Rate since the previous call (for progress lines); None during warm-up."""
        if self._window_start is None or self._window_images == 0:
            return None
        now = self._now()
        fps = self._window_images / max(now - self._window_start, 1e-9)
        self._window_start, self._window_images = now, 0
        return fps

    def end_epoch(self) -> None:
        if self._start is not None and self._images:
            seconds = self._now() - self._start
            self.epoch_fps = self._images / max(seconds, 1e-9)
            self.total_seconds += seconds
            self.total_images += self._images
        self._start = None

    @property
    def fps(self) -> float:
        return self.total_images / self.total_seconds if self.total_seconds > 0 else 0.0
