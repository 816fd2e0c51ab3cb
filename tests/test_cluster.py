"""What a cluster does to a run: a preemption signal (saves at the next step and stops, resumable bit for bit), a
second run into the same folder, a resume with other settings, and folders with odd names and symlink loops.
(SIGTERM to the launcher of a 2-process run: tests/test_distributed.py.)"""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import ROOT, cli_command, make_image_folder, run_cli, signal_on_line
from safetensors.torch import load_file

from vgg16.preempt import EXIT_PREEMPTED, SECOND_PRESS_AFTER_S, StopRequest
from vgg16.run_lock import OWNER_FILE
from vgg16.runner import main
from vgg16.data.sources import load_source

TINY = ["-a", "vgg11", "--image-size", "32", "--lr", "0.02", "-p", "1", "-j", "0", "-b", "4", "--epochs", "2"]


def _results(out):
    return json.loads((out / "results.json").read_text())


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 training images: batch 4 gives 12 optimizer steps per epoch."""
    return make_image_folder(tmp_path_factory.mktemp("d") / "imgs", n_train=16, n_val=4)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    done = run_cli("--data", str(data), *TINY, "--output-dir", str(out), launcher=())
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _signal_at(line_start: str, sig, *args: str, launcher=()) -> tuple:
    """Run train_vgg16.py, send `sig` to it (or its launcher) when a line starts with `line_start`; (rc, output)."""
    cmd, env = cli_command(*args, launcher=launcher)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    log = signal_on_line(proc, line_start, sig)
    return proc.returncode, log


def test_sigterm_and_sigusr1_save_at_the_step_reached_and_resume_to_the_uninterrupted_weights(data, uninterrupted,
                                                                                              tmp_path):
    """SIGTERM to `accelerate launch` (1 process: the launcher passes no signal on, so its end reaches the
    training process as its parent-death signal) in epoch 1, then SIGUSR1 to the training process itself in
    epoch 2: each stops with one line at the next step, leaves a checkpoint there, and two resumes end on
    exactly the weights of the run that was never interrupted."""
    args = ["--data", str(data), *TINY, "--output-dir", str(tmp_path)]
    rc, log = _signal_at("epoch 1/2 [torchvision]  step 3/12", signal.SIGTERM, *args,
                         launcher=("accelerate", "launch", "--num_processes", "1"))
    stops = [line for line in log.splitlines() if line.startswith("stopping at step")]
    assert len(stops) == 1, log[-3000:]
    stopped = _results(tmp_path)["stopped"]
    assert _results(tmp_path)["status"] == "preempted" and stopped["signal"] == "SIGTERM"
    assert 3 <= stopped["step"] < 12 and (tmp_path / "checkpoints" / f"step_{stopped['step']:09d}").is_dir()
    assert stops[0] == (f"stopping at step {stopped['step']} on SIGTERM: checkpoint {stopped['checkpoint']}; "
                        "resume with --resume auto")

    rc, log = _signal_at("epoch 2/2 [torchvision]  step 2/12", signal.SIGUSR1, *args, "--resume", "auto")
    assert rc == EXIT_PREEMPTED, log[-3000:]
    assert "resumed from" in log and log.count("stopping at step") == 1 and "on SIGUSR1" in log
    assert 12 < _results(tmp_path)["stopped"]["step"] < 24

    done = run_cli(*args, "--resume", "auto", launcher=())
    assert done.returncode == 0 and _results(tmp_path)["status"] == "finished", done.stderr[-3000:]
    assert _results(tmp_path)["steps"] == 24
    _same_weights(tmp_path, uninterrupted)


def test_a_second_ctrl_c_stops_at_once_but_the_launchers_copy_of_the_first_does_not():
    request = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)  # at once: torchelastic forwarding the same Ctrl-C
        request._received_at -= SECOND_PRESS_AFTER_S + 0.1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        request.restore()


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def test_a_second_run_into_a_folder_in_use_stops_at_once_and_a_dead_runs_lock_is_taken_over(data, tmp_path):
    cmd, env = cli_command("--data", str(data), *TINY, "--output-dir", str(tmp_path), launcher=())
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        for line in first.stdout:
            if line.startswith("epoch 1/2 [torchvision]  step 2/12"):
                break
        first.send_signal(signal.SIGSTOP)  # holds its lock, writes nothing while the second run tries
        before = _snapshot(tmp_path)
        started = time.time()
        second = run_cli("--data", str(data), *TINY, "--output-dir", str(tmp_path), launcher=())
        assert second.returncode == 2 and time.time() - started < 30
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith(f"error: --output-dir {tmp_path} is in use by process "
                                                         f"{first.pid} on "), second.stderr
        assert _snapshot(tmp_path) == before
    finally:
        first.kill()  # SIGKILL: its lock owner file stays behind
        first.wait()
    assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == first.pid
    third = run_cli("--data", str(data), *TINY, "--stop-step-num", "1", "--output-dir", str(tmp_path), launcher=())
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"note: took over {tmp_path}'s lock from process {first.pid} on " in third.stdout
    assert "which is no longer running" in third.stdout and not (tmp_path / OWNER_FILE).exists()


def test_a_resume_with_another_batch_size_and_epoch_count_says_both_with_the_lr(data, tmp_path, capsys):
    args = ["--data", str(data), *TINY[:-4], "--lr-scheduler", "cosine", "--output-dir", str(tmp_path)]
    assert main([*args, "-b", "4", "--epochs", "2"]) == 0  # 12 steps per epoch
    capsys.readouterr()
    assert main([*args, "-b", "8", "--epochs", "3", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if line.startswith("note: resuming with changed settings"))
    assert "--batch-size 4 -> 8" in note and "steps per epoch 12 -> 6" in note and "--epochs 2 -> 3" in note
    # The 2-epoch cosine ended at lr 0; the 3-epoch plan after 2 epochs: 0.02 x (1 + cos(2 pi / 3)) / 2.
    assert "lr 0 at the save, 0.005 now" in note, note
    assert _results(tmp_path)["epochs"] == 3 and _results(tmp_path)["steps"] == 30


def test_a_mid_epoch_resume_with_another_process_count_stops_with_one_line(data, tmp_path):
    args = ["--data", str(data), *TINY, "--output-dir", str(tmp_path)]
    done = run_cli(*args, "--stop-step-num", "5", launcher=())  # epoch 1, step 5 of 12
    assert done.returncode == 0
    done = run_cli(*args, "--resume", "auto", launcher=("accelerate", "launch", "--multi_gpu", "--num_processes", "2"),
                   env={"ACCELERATE_USE_CPU": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 2, done.stderr[-3000:]  # one per process, as every check
    assert "was saved in the middle of an epoch with processes 1; with processes 2" in errors[0]


def test_a_folder_with_a_non_utf8_name_and_symlink_loops_counts_each_image_once_under_its_class(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs", n_train=3, n_val=2)
    cat = root / "train" / "cat"
    first = sorted(cat.iterdir())[0]
    odd = os.fsencode(str(cat)) + b"/bad\xffname" + os.fsencode(first.suffix)
    with open(odd, "wb") as f:
        f.write(first.read_bytes())
    os.symlink("..", cat / "loop")  # train/cat/loop -> train: a cycle, and the way into dog's and eel's folders
    os.symlink("../dog", cat / "dogs")
    os.symlink(first.name, cat / f"again{first.suffix}")
    source = load_source(str(root), 0)
    labels = source.train["label"]
    assert [labels.count(i) for i in range(3)] == [4, 3, 3]  # cat: 3 + the odd name; no dog or eel image twice
    (note,) = source.notes
    for text in ("1 link(s) back into a folder above them not followed (a cycle): cat/loop",
                 "link(s) into another class's folder not followed", "cat/dogs",
                 f"1 image(s) reached a second time through a link counted once: cat/again{first.suffix}",
                 f"1 file name(s) that are not valid UTF-8 read by content: cat/bad\\xffname{first.suffix}"):
        assert text in note, note
    assert main(["--data", str(root), "-a", "vgg11", "--image-size", "32", "-b", "2", "-j", "0", "--epochs", "1",
                 "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"note: {root / 'train'}: " in out and _results(tmp_path / "out")["train_images"] == 10


def test_the_sbatch_script_stops_the_run_on_slurms_warning_and_requeues_the_job(data, tmp_path):
    """accelerate_configs/slurm/train_1node.sbatch run as SLURM runs it, with `srun` and `scontrol` standing in
    (srun runs its command here; scontrol records the requeue): SIGUSR1 to the batch shell, as
    `--signal=B:USR1@120` sends it, stops the run with a checkpoint and requeues the job."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (shims / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    out = tmp_path / "run"
    env = {**cli_command()[1], "PATH": f"{shims}:{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(ROOT), "CONFIG": "accelerate_configs/cpu.yaml"}
    proc = subprocess.Popen(["bash", "accelerate_configs/slurm/train_1node.sbatch", str(data), str(out), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    log = signal_on_line(proc, "epoch 1/2 [torchvision]  step 3/12", signal.SIGUSR1)
    assert proc.returncode == 0, log[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n", log[-3000:]
    stopped = _results(out)["stopped"]
    assert (out / "checkpoints" / f"step_{stopped['step']:09d}").is_dir() and "--resume auto" in _results(out)["command"]
