import pytest

from vgg16 import metrics
from vgg16.metrics import ThroughputMeter, new_topk_metric


def test_topk_against_a_hand_computed_answer():
    metric = new_topk_metric()
    # 4 samples, ranked predictions (top-5): hit at rank 1, rank 3, rank 5, never.
    metric.add_batch(predictions=[[2, 0, 1, 3, 4], [0, 1, 7, 3, 4]], references=[2, 7])
    metric.add_batch(predictions=[[9, 8, 7, 6, 5], [1, 2, 3, 4, 5]], references=[5, 0])
    result = metric.compute()
    assert result == {"acc1": 25.0, "acc5": 75.0, "count": 4}


def test_throughput_skips_warmup_and_synchronises(monkeypatch):
    clock = iter([10.0, 12.0, 14.0, 20.0])  # readings: start of timing, window, window, end of epoch
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    syncs = []
    meter = ThroughputMeter(lambda: syncs.append(1), warmup_steps=2)
    meter.begin_epoch(steps_in_epoch=10)
    meter.step(100)
    meter.step(100)  # the 2nd step ends warm-up: timing starts here (t=10)
    assert meter.window_fps() is None
    meter.step(100)
    meter.step(100)
    assert meter.window_fps() == pytest.approx(200 / 2.0)  # t=12
    meter.step(100)
    assert meter.window_fps() == pytest.approx(100 / 2.0)  # t=14
    meter.end_epoch()  # t=20
    assert meter.fps == pytest.approx(300 / 10.0)
    assert len(syncs) == 4  # the device was synchronised before every clock reading
