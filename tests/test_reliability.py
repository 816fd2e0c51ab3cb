"""Kills, bad images, bad checkpoints, full disks and diverging runs: none of them may cost a run or a checkpoint.
(A SIGKILL mid-epoch resumed bit for bit: test_recipes' every-option test, killed in both epochs.)"""

import json
import shutil

import pytest
import torch
from conftest import make_image_folder, run_cli
from safetensors.torch import load_file

from vgg16 import check_data
from vgg16.errors import RunFailure
from vgg16.runner import main

TINY = ["-a", "vgg11", "--image-size", "32", "--lr", "0.02", "-p", "1"]


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 training images: batch 4 gives 12 optimizer steps per epoch."""
    return make_image_folder(tmp_path_factory.mktemp("d") / "imgs", n_train=16, n_val=4)


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path, capsys):
    args = ["--dataset", "synthetic", "--num-classes", "3", *TINY, "-b", "4", "--stop-step-num", "2", "-j", "0"]
    assert main([*args, "--resume", "auto", "--output-dir", str(tmp_path)]) == 0
    assert "no checkpoint in" in capsys.readouterr().out and _results(tmp_path)["steps"] == 2


def test_a_restarted_group_takes_the_newest_checkpoint_over_the_one_it_was_given(tmp_path, monkeypatch):
    """What a worker restarted by `accelerate launch --max_restarts` resumes from (torchelastic sets
    TORCHELASTIC_RESTART_COUNT); the whole restart runs for real in tests/test_distributed.py."""
    from vgg16.checkpoint import TRAINER_STATE, resolve_resume

    lines = []
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    given = str(tmp_path / "elsewhere" / "epoch_0001")
    assert resolve_resume(given, tmp_path, False, lines.append) == given  # nothing newer written yet
    assert resolve_resume(None, tmp_path, False, lines.append) is None
    assert [line.split(": ", 1)[1] for line in lines] == [
        f"no checkpoint was written before the failure, starting from --resume {given}",
        "no checkpoint was written before the failure, starting fresh"]
    for step, name in ((6, "step_000000006"), (9, "step_000000009")):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoints" / ".tmp_step_000000012").mkdir()  # a save the failure cut short
    newest = str(tmp_path / "checkpoints" / "step_000000009")
    assert resolve_resume(given, tmp_path, False, lines.append) == newest
    assert lines[-1].endswith(f"resuming from the newest checkpoint, {newest}")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resolve_resume(given, tmp_path, False, lines.append) == given  # a first attempt does as told


@pytest.fixture
def folder_with_bad_images(tmp_path):
    root = make_image_folder(tmp_path / "bad", n_train=4, n_val=4)
    good = (root / "train" / "cat" / "000.jpg").read_bytes()
    (root / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "eel" / "notes.jpg").write_text("not an image")
    (root / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


def test_bad_images_are_skipped_reported_once_and_counted(folder_with_bad_images, tmp_path):
    # 15 training files, batch 5: every file is used each epoch, none dropped by drop_last.
    done = _ok(run_cli("--data", str(folder_with_bad_images), *TINY, "-b", "5", "--epochs", "2", "-j", "0",
                       "--output-dir", str(tmp_path)))
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: skipping unreadable image")]
    assert len(warnings) == 4 and any("truncated.jpg" in w for w in warnings) and any("broken.png" in w for w in warnings)
    r = _results(tmp_path)
    assert r["bad_images"] == 4
    assert r["val_images"] == 12  # 13 files, one unreadable: counted once each, the stand-in not at all


def test_strict_data_stops_at_the_first_bad_image_naming_it(folder_with_bad_images, tmp_path):
    done = run_cli("--data", str(folder_with_bad_images), *TINY, "-b", "5", "--epochs", "1", "-j", "1",
                   "--strict-data", "--output-dir", str(tmp_path), launcher=())
    assert done.returncode == 1  # the data, not the command: a failure while running
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unreadable image ") and "--strict-data" in lines[0]


def test_check_data_lists_every_bad_file(folder_with_bad_images, capsys):
    assert check_data.main(["--data", str(folder_with_bad_images), "--workers", "2"]) == 1
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 4
    assert sorted(line.split(": ")[0] for line in listed) == ["train", "train", "train", "validation"]
    assert check_data.main(["--data", str(make_image_folder(folder_with_bad_images.parent / "good")),
                            "--workers", "1"]) == 0


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    _ok(run_cli("--data", str(data), *TINY, "-b", "8", "--epochs", "1", "-j", "0", "--output-dir", str(out),
                launcher=()))
    return out / "checkpoints" / "epoch_0001"


@pytest.mark.parametrize("damage, extra, message", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]), [],
     "is not a readable safetensors file"),
    (lambda c: (c / "optimizer.bin").write_bytes((c / "optimizer.bin").read_bytes()[:100]), [],
     "could not load the training state"),
    (lambda c: (c / "trainer_state.json").write_text("{"), [], "trainer_state.json is damaged"),
    (lambda c: None, ["-a", "vgg13"], "does not fit this model"),
])
def test_bad_checkpoints_are_one_line(checkpoint, data, tmp_path, capsys, damage, extra, message):
    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    damage(copy)
    args = ["--data", str(data), *TINY, "-b", "8", "--epochs", "2", "-j", "0", *extra]
    assert main([*args, "--resume", str(copy), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_more_processes_than_validation_images(tmp_path):
    data = make_image_folder(tmp_path / "d", classes=("a",), n_train=4, n_val=1)
    done = run_cli("--data", str(data), *TINY, "-b", "2", "--epochs", "1", "-j", "0", "--output-dir", str(tmp_path / "o"),
                   launcher=("accelerate", "launch", "--multi_gpu", "--num_processes", "2"),
                   env={"ACCELERATE_USE_CPU": "1"})
    assert done.returncode != 0 and "1 validation image(s) for 2 processes" in done.stderr


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint(data, tmp_path, capsys, monkeypatch):
    """The disk cannot be filled here: the second checkpoint's save fails as a full disk does (ENOSPC)."""
    from accelerate import Accelerator

    real_save_state, calls = Accelerator.save_state, []

    def save_state(self, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            real_save_state(self, output_dir, **kwargs)  # a half-written folder, as when space runs out
            raise OSError(28, "No space left on device")
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    args = ["--data", str(data), *TINY, "-b", "8", "--epochs", "3", "-j", "0", "--output-dir", str(tmp_path)]
    assert main(args) == 1  # a failure while running, not a mistake in the command (docs/faults.md, exit codes)
    err = capsys.readouterr().err
    assert "No space left on device" in err and "epoch_0001 is intact" in err
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_0001"]  # no half-written folder
    monkeypatch.setattr(Accelerator, "save_state", real_save_state)
    assert main([*args, "--resume", "auto"]) == 0  # and the run goes on from it
    assert _results(tmp_path)["epochs"] == 3


def test_a_refused_write_of_the_export_is_one_line_and_keeps_the_previous_one(tmp_path):
    """A real write failure, not a stand-in: the kernel's file-size limit (RLIMIT_FSIZE) makes safetensors fail as
    a full disk does, with its own error type (SafetensorError, which is no OSError). CPython ignores SIGXFSZ, so
    the write returns EFBIG instead of killing the test."""
    import resource

    from accelerate import Accelerator

    from vgg16.checkpoint import export_model
    from vgg16.model import build_model

    accelerator, config = Accelerator(cpu=True), {"arch": "vgg11", "num_classes": 3, "image_size": 32}
    export_model(accelerator, build_model("vgg11", 3, head="small"), tmp_path, config)
    before = load_file(str(tmp_path / "model.safetensors"))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    try:
        with pytest.raises(RunFailure, match=r"could not write the model to .* \(File too large \(os error 27\)\); "
                                             "the previous export and checkpoints are intact"):
            export_model(accelerator, build_model("vgg11", 3, head="small"), tmp_path, config)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    after = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before) and not (tmp_path / ".tmp_export").exists()


def test_a_diverging_run_stops_at_the_step_and_saves_nothing_after_it(data, tmp_path, capsys):
    args = ["--data", str(data), "-a", "vgg11", "--image-size", "32", "--lr", "1e12", "-b", "4", "--epochs", "2",
            "-j", "0", "-p", "100", "--checkpoint-every", "1", "--keep-checkpoints", "100", "--output-dir", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "inf/nan at step" in err and "Lower --lr" in err and len(err.splitlines()) == 1
    bad_step = int(err.split("at step ")[1].split()[0])
    saved = [json.loads((p / "trainer_state.json").read_text())["global_step"]
             for p in (tmp_path / "checkpoints").glob("step_*")]
    assert all(step < bad_step for step in saved)
    assert not (tmp_path / "results.json").exists()


class _StandInNPU:
    """A stand-in for torch.npu (no NPU here): two devices whose RNG states are byte tensors, as torch_npu's are."""

    def __init__(self):
        self.states = [torch.Generator().manual_seed(k).get_state() for k in (1, 2)]

    def is_available(self):
        return True

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, states):
        self.states = [s.clone() for s in states]


def test_npu_random_state_is_saved_and_restored_with_the_checkpoint(tmp_path, monkeypatch):
    """Accelerate's save_state has no NPU branch: our checkpoint must carry the NPU generators itself.
    torch.npu is a stand-in namespace here (no NPU on this machine); the save and load are the real ones."""
    from accelerate import Accelerator

    from vgg16 import checkpoint as ckpt
    from vgg16.model import build_model

    npu = _StandInNPU()
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(build_model("vgg11", 3, head="small"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=0.1), lambda s: 1.0)
    saved = npu.get_rng_state_all()
    folder = ckpt.save_training_state(accelerator, tmp_path / "checkpoints", ckpt.RunState(0, 3, 3, 0.0),
                                      {"scheduler": scheduler.state_dict()})
    assert (folder / "npu_rng_state_0.safetensors").is_file()
    npu.states = [torch.Generator().manual_seed(99).get_state()] * 2  # the generators move on after the save
    ckpt.load_training_state(accelerator, folder, model, scheduler)
    assert all(torch.equal(a, b) for a, b in zip(npu.states, saved)) and len(npu.states) == 2
    # Without an NPU nothing extra is written.
    monkeypatch.setattr(torch, "npu", None, raising=False)
    assert not (ckpt.save_training_state(accelerator, tmp_path / "c2", ckpt.RunState(0, 1, 1, 0.0), {"scheduler": {}})
                / "npu_rng_state_0.safetensors").exists()
