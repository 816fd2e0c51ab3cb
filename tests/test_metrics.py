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


def test_class_report_is_scikit_learns_over_the_classes_with_validation_images(tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.metrics import classification_report

    from vgg16.class_metrics import TABLE_CLASSES, class_report, most_confused, per_class_markdown, plot_confusion

    rng = np.random.default_rng(0)
    names = ["ant", "bee", "cat", "dog", "eel"]
    truth = rng.integers(0, 4, 200)  # "eel" has no validation image but is predicted now and then
    guesses = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 5, 200))
    guesses[truth == 1] = 2  # "bee" is never predicted right: recall 0
    report = class_report(truth, guesses, names)
    theirs = classification_report(truth, guesses, labels=[0, 1, 2, 3], output_dict=True, zero_division=0)
    assert report["macro_f1"] == pytest.approx(100 * theirs["macro avg"]["f1-score"])
    assert report["balanced_acc"] == pytest.approx(100 * theirs["macro avg"]["recall"])
    for i, row in enumerate(report["per_class"][:4]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (100 * theirs[str(i)]["precision"], 100 * theirs[str(i)]["recall"], 100 * theirs[str(i)]["f1-score"]),
            abs=1e-3)
    assert report["per_class"][4]["support"] == 0 and np.array(report["confusion"]).sum() == 200
    assert most_confused(report["confusion"], names, 1)[0][:2] == ("bee", "cat")
    table = per_class_markdown(report["per_class"])
    assert "| bee | " in table and "Never predicted correctly (1): bee." in table
    many = [{**row, "class": f"c{i}", "recall": float(i), "support": 1} for i, row in
            enumerate(report["per_class"] * 10)]  # 50 classes: the lowest recall first
    listed = [line.split(" | ")[0][2:] for line in per_class_markdown(many).splitlines()
              if line.startswith("| c") and not line.startswith("| class")]
    assert listed == [f"c{i}" for i in range(TABLE_CLASSES)]
    for classes in (names, [f"class {i}" for i in range(60)]):  # the matrix, or the most confused pairs
        matrix = np.bincount(rng.integers(0, len(classes) ** 2, 500), minlength=len(classes) ** 2)
        plot_confusion(matrix.reshape(len(classes), -1).tolist(), classes, tmp_path / "c.png", "test")
        with Image.open(tmp_path / "c.png") as png:
            assert png.format == "PNG" and png.size[0] > 400
