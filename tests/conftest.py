"""Small real datasets made on the spot, in every layout the trainer reads, and a helper to run the CLI."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def class_image(label: int, rng: np.random.Generator, size=(40, 30)) -> np.ndarray:
    """A learnable picture: class k is a bright bar at a class-specific position, plus noise."""
    w, h = size
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    x0 = (label * w) // 4
    img[:, x0:x0 + w // 4, label % 3] = 255
    return img


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), n_train=8, n_val=4, size=(40, 30), seed=0,
                      val_name="val") -> Path:
    """ImageNet layout with images in several modes and formats (RGB JPEG, L PNG, RGBA PNG, P PNG, CMYK JPEG)."""
    rng = np.random.default_rng(seed)
    modes = [("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg")]
    for split, n in (("train", n_train), (val_name, n_val)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                mode, ext = modes[i % len(modes)]
                Image.fromarray(class_image(label, rng, size)).convert(mode).save(folder / f"{i:03d}{ext}")
    return root


# Real photographs: crops of the photos scikit-image ships, in the ImageNet layout (vgg16.tools.photos).
from vgg16.tools.photos import make_photo_folder  # noqa: E402,F401 - the tests import it from here


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "imgs")


@pytest.fixture
def cifar_batches(tmp_path: Path) -> Path:
    """cifar-10-batches-py as the python tarball unpacks it, 10 classes, few images."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    for name, n in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)):
        labels = [i % 10 for i in range(n)]
        data = np.stack([class_image(k, rng, (32, 32)).transpose(2, 0, 1).reshape(-1) for k in labels])
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    return folder.parent


def make_parquet_shards(root: Path, train_rows=(13, 20, 7, 31, 16, 9, 24), val_rows=(11, 12), group_rows=5,
                        classes=("cat", "dog", "eel"), size=(16, 12), seed=0) -> Path:
    """The hub's parquet layout (data/train-00000-of-00007.parquet, ...), written by `datasets` as the hub's
    files are: ClassLabel names in the schema metadata, row groups of `group_rows` rows (shard sizes differ).
    Each image holds its split-wide row number in its first pixel (red = n // 256, green = n % 256) and is PNG,
    so tests can tell which rows a run read, through any crop and flip."""
    import io

    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, shards in (("train", train_rows), ("validation", val_rows)):
        row = 0
        for i, n in enumerate(shards):
            images, labels = [], []
            for _ in range(n):
                label = int(rng.integers(len(classes)))
                img = class_image(label, rng, size)
                img[0, 0] = (row // 256, row % 256, 0)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "PNG")
                images.append({"bytes": buf.getvalue(), "path": None})
                labels.append(label)
                row += 1
            ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
            ds.to_parquet(str(root / "data" / f"{split}-{i:05d}-of-{len(shards):05d}.parquet"), batch_size=group_rows)
    return root


def cli_command(*args: str, launcher: tuple = ("accelerate", "launch", "--num_processes", "1"), env=None):
    """(command, environment) for train_vgg16.py as a user runs it: through `accelerate launch` from this
    environment's bin folder, or plain python when launcher=()."""
    bin_dir = Path(sys.executable).parent
    cmd = [*([str(bin_dir / launcher[0]), *launcher[1:]] if launcher else [sys.executable]), str(ROOT / "train_vgg16.py"), *args]
    return cmd, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", **(env or {})}


def run_cli(*args: str, launcher: tuple = ("accelerate", "launch", "--num_processes", "1"), env=None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train_vgg16.py to the end (cli_command) and capture its output."""
    cmd, full_env = cli_command(*args, launcher=launcher, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def kill_when(target: Path, *args: str, seconds: int = 300) -> None:
    """Run train_vgg16.py (cli_command) in a session of its own and SIGKILL the launcher and its workers, without
    warning, as soon as `target` (a checkpoint folder) exists."""
    import signal
    import time

    cmd, env = cli_command(*args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env, cwd=ROOT)
    deadline = time.time() + seconds
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), f"{target} never appeared"


def signal_on_line(proc: subprocess.Popen, line_start: str, sig, pid=None, timeout: int = 300) -> str:
    """Read `proc`'s output (text, stderr merged) until a line starts with `line_start`, send `sig` to `pid`
    (the process itself by default), then read to the end; return the whole output. The process's session is
    SIGKILLed if it outlives the wait."""
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(line_start):
                os.kill(pid or proc.pid, sig)
                break
        lines.append(proc.communicate(timeout=timeout)[0])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return "".join(lines)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; in-process runs with other settings need it cleared (as
    Accelerate's own tests do)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
