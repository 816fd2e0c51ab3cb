"""Several processes (gloo on CPU) train and evaluate one model, equal to a single-process run.

Launched as users launch: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_command, make_image_folder, run_cli, signal_on_line
from safetensors.torch import load_file, save_file

from vgg16.model import build_model
from vgg16.runner import main

# OMP_NUM_THREADS=1 as `accelerate launch` sets it: each process then takes its share of the cores (1 of 2 with
# 2 processes, 2 with 1). Two threads in each of 2 processes pick other CPU kernels, whose summation order moved a
# few first-layer weights by up to 1e-5 after 6 steps; logic errors move every weight far more.
# Exact comparisons (resume, two machines) need the same thread count per process on both sides.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CPU = {"ACCELERATE_USE_CPU": "1"}
# No batch norm, no dropout: a 2 x b run must then match a 1 x 2b run up to float summation order.
PLAIN = ["-a", "vgg11", "--dropout", "0", "--image-size", "32", "--lr", "0.02", "-j", "0", "-p", "1"]


def launcher(n):
    return ("accelerate", "launch", "--multi_gpu", "--num_processes", str(n)) if n > 1 else \
        ("accelerate", "launch", "--num_processes", "1")


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(out):
    return json.loads((out / "results.json").read_text())


def _weights_close(a, b, exact=False):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("d") / "imgs")


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2")
    done = _ok(run_cli("--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--output-dir", str(out),
                       launcher=launcher(2), env=CPU))
    return out, done


def test_two_processes_train_the_same_model_as_one_with_twice_the_batch(data, tmp_path):
    """From given weights with the features frozen in epoch 1, then every layer (features at half the lr) in
    epoch 2: the features must still be all-reduced after the unfreeze, or the two runs part."""
    torch.manual_seed(11)
    start = build_model("vgg11", 3, head="small", dropout=0.0).state_dict()
    save_file(start, str(tmp_path / "start.safetensors"))
    args = ["--data", str(data), *PLAIN, "--epochs", "2", "--pretrained", str(tmp_path / "start.safetensors"),
            "--freeze-epochs", "1", "--backbone-lr-scale", "0.5"]
    out2 = tmp_path / "two"
    _ok(run_cli(*args, "-b", "4", "--output-dir", str(out2), launcher=launcher(2), env={**CPU, **ONE_THREAD}))
    tmp_path = tmp_path / "one"
    _ok(run_cli(*args, "-b", "8", "--output-dir", str(tmp_path), env=ONE_THREAD))
    r1, r2 = _results(tmp_path), _results(out2)
    assert (r2["num_processes"], r2["global_batch_size"], r2["per_process_batch_size"]) == (2, 8, 4)
    assert (r1["num_processes"], r1["global_batch_size"], r1["steps"]) == (1, 8, r2["steps"])
    _weights_close(tmp_path, out2)
    after_frozen = load_file(str(out2 / "checkpoints" / "epoch_0001" / "model.safetensors"))
    final = load_file(str(out2 / "model.safetensors"))
    features = [k for k in start if k.startswith("features.")]
    assert all(torch.equal(after_frozen[k], start[k]) for k in features)  # epoch 1: frozen
    assert not torch.equal(after_frozen["classifier.6.weight"], start["classifier.6.weight"])
    assert not any(torch.equal(final[k], start[k]) for k in features)  # epoch 2: every feature tensor trained


def test_only_the_main_process_writes_and_prints(two_process_run):
    out, done = two_process_run
    assert done.stdout.count("Acc@1") == 1 and done.stdout.count("validation:") == 2
    # .run.lock stays (empty, unlocked) after the run: flock's file is left in place (vgg16/run_lock.py).
    assert sorted(p.name for p in out.iterdir()) == [".run.lock", "README.md", "checkpoints", "config.json",
                                                     "confusion.png", "curves.png", "model.safetensors",
                                                     "results.json", "results.md", "run.yaml"]
    ckpt = out / "checkpoints" / "epoch_0002"
    assert {p.name for p in ckpt.glob("random_states_*")} == {"random_states_0.pkl", "random_states_1.pkl"}


def test_a_two_process_run_reruns_from_its_run_yaml_to_the_same_weights(two_process_run, tmp_path):
    out, _ = two_process_run
    again = tmp_path / "again"
    _ok(run_cli("--config", str(out / "run.yaml"), "--output-dir", str(again), launcher=launcher(2), env=CPU))
    _weights_close(out, again, exact=True)
    assert _results(again)["steps"] == _results(out)["steps"] and _results(again)["num_processes"] == 2


def test_evaluation_counts_each_of_101_images_once_with_1_2_and_3_processes(two_process_run, tmp_path):
    out, _ = two_process_run
    val = make_image_folder(tmp_path / "v", n_train=1, n_val=34, seed=9)
    sorted((val / "val" / "eel").iterdir())[-1].unlink()  # 101 images: no batch x process count divides it
    figures = []
    for n in (1, 2, 3):
        dest = tmp_path / f"e{n}"
        args = ["--data", str(val), *PLAIN, "-b", "4", "--evaluate", "--pretrained", str(out), "--output-dir", str(dest),
                # and another validation batch (7: divides neither 101 nor 4) must count the same images the same way
                *(["--val-batch-size", "7"] if n == 2 else [])]
        # One process in this one (no launcher start-up to pay); 2 and 3 as users launch them.
        assert main(args) == 0 if n == 1 else _ok(run_cli(*args, launcher=launcher(n), env=CPU))
        r = _results(dest)
        assert r["num_processes"] == n
        figures.append((r["val_images"], r["acc1"], r["acc5"], round(r["val_loss"], 5), r["macro_f1"],
                        r["balanced_acc"], r["confusion"], r["per_class"]))
    assert figures[0][0] == 101
    assert figures[0] == figures[1] == figures[2]
    # The matrix counts every image once and its diagonal is top-1; the per-class figures are scikit-learn's on the
    # same predictions (the exported model's, through predict, which validates as the trainer does).
    import numpy as np
    from sklearn.metrics import classification_report

    import vgg16
    from vgg16.data.images import decode_image
    from vgg16.predict import predict

    confusion, per_class = np.array(figures[0][6]), figures[0][7]
    assert confusion.sum() == 101 and 100 * np.trace(confusion) / confusion.sum() == pytest.approx(figures[0][1])
    config = json.loads((out / "config.json").read_text())
    images = sorted((val / "val").rglob("*.*"))
    truth = [config["class_names"].index(p.parent.name) for p in images]
    model = vgg16.from_pretrained(str(out)).eval()
    guesses = [predict(model, config, [decode_image({"path": str(p)})], k=1)[0][0][1] for p in images]
    assert confusion.tolist() == np.bincount(np.array(truth) * 3 + guesses, minlength=9).reshape(3, 3).tolist()
    report = classification_report(truth, guesses, labels=[0, 1, 2], target_names=config["class_names"],
                                   output_dict=True, zero_division=0)
    for row in per_class:
        theirs = report[row["class"]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (100 * theirs["precision"], 100 * theirs["recall"], 100 * theirs["f1-score"], theirs["support"]), abs=1e-3)
    assert figures[0][4] == pytest.approx(100 * report["macro avg"]["f1-score"])
    assert figures[0][5] == pytest.approx(100 * report["macro avg"]["recall"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LAUNCHED: list = []


@pytest.fixture(autouse=True)
def _no_launch_outlives_its_test():
    """A failed assertion must not leave launchers training in the background (their workers end with them)."""
    yield
    while _LAUNCHED:
        proc = _LAUNCHED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _popen(launch: list, *args: str, env=None, preexec_fn=None) -> subprocess.Popen:
    """train_vgg16.py under `accelerate launch ...` in its own session, as a machine of its own."""
    cmd, full_env = cli_command(*args, launcher=("accelerate", "launch", *launch), env={**CPU, **(env or {})})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=ROOT,
                            start_new_session=True, preexec_fn=preexec_fn)
    _LAUNCHED.append(proc)
    return proc


def _wait_for(path, proc, seconds=300):
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared"


def _worker_pid(launcher_pid: int, rank: int) -> int:
    """The training process of global rank `rank` among the launcher's children (their RANK variable)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def _two_machines(data, out, port, *extra):
    """Machine ranks 0 and 1 of one job on this host (`--num_machines 2 --main_process_ip 127.0.0.1`)."""
    return [_popen(["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                    "--main_process_ip", "127.0.0.1", "--main_process_port", port],
                   "--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--output-dir", str(out), *extra,
                   env=ONE_THREAD) for rank in (0, 1)]


def test_two_machines_form_one_job_survive_losing_one_and_resume_to_the_same_weights(data, two_process_run, tmp_path):
    """Two machines on localhost: killing machine 1's launcher and worker (SIGKILL, as a lost node) ends machine 0 within
    seconds with one line; both started again with --resume auto end equal to the single-machine 2-process run."""
    out2, _ = two_process_run
    procs = _two_machines(data, tmp_path, str(_free_port()), "--checkpoint-every", "1")
    _wait_for(tmp_path / "checkpoints" / "step_000000002", procs[0])
    # A lost machine takes its worker with it at once (a killed launcher alone would send its worker the
    # parent-death SIGTERM, which stops the job cleanly: docs/cluster.md).
    worker = _worker_pid(procs[1].pid, 1)
    os.kill(procs[1].pid, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    log0 = procs[0].communicate(timeout=120)[0]
    assert procs[0].returncode != 0 and time.time() - killed_at < 60, log0[-3000:]
    assert "error: rank 0 of 2: another process of this job ended" in log0, log0[-3000:]
    procs[1].communicate(timeout=60)
    assert not (tmp_path / "results.json").exists()

    procs = _two_machines(data, tmp_path, str(_free_port()), "--resume", "auto")
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "resumed from" in logs[0] and _results(tmp_path)["num_processes"] == 2
    _weights_close(tmp_path, out2, exact=True)  # the same job as the uninterrupted single-machine 2-process run


def test_a_launch_that_falls_back_to_separate_processes_fails(data, tmp_path):
    """`use_cpu: true` with MULTI_GPU starts 2 processes that would each run alone (Accelerate does not pass
    use_cpu on to them); the run must refuse, once, before any process group forms. On a machine with GPUs the
    later check ("the processes would train separate models") catches the same launch."""
    config = tmp_path / "bad.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
                      "num_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n")
    done = run_cli("--data", str(data), *PLAIN, "-b", "4", "--epochs", "1", "--output-dir", str(tmp_path / "o"),
                   launcher=("accelerate", "launch", "--config_file", str(config)))
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "but it has none visible" in ours[0] and "ACCELERATE_USE_CPU=1" in ours[0], done.stderr


@pytest.mark.parametrize("sampler", [["--ra-sampler", "--ra-reps", "2"], ["--sampler", "balanced"]])
def test_repeated_augmentation_and_the_balanced_stream_keep_two_processes_equal_to_one(data, tmp_path, sampler):
    """Each global batch holds the same copies (same images, same augmentation seeds) in both runs: torchvision's
    per-rank streams interleave into the single-process order (tests/test_recipes.py checks the streams), and the
    balanced stream is one global order whatever the process count (tests/test_imbalance.py)."""
    args = ["--data", str(data), *PLAIN, *sampler, "--epochs", "1", "--stop-step-num", "3"]
    two, one = tmp_path / "two", tmp_path / "one"
    _ok(run_cli(*args, "-b", "4", "--output-dir", str(two), launcher=launcher(2), env={**CPU, **ONE_THREAD}))
    _ok(run_cli(*args, "-b", "8", "--output-dir", str(one), env=ONE_THREAD))
    assert _results(two)["steps"] == _results(one)["steps"] == 3
    assert _results(two)["val_images"] == _results(one)["val_images"] == 12  # validation still counts each once
    _weights_close(two, one)


def test_a_killed_worker_restarts_the_group_which_resumes_to_the_same_weights(data, two_process_run, tmp_path):
    """--max_restarts 1: SIGKILL of rank 0 (the main process) mid-epoch 1; the launcher starts both processes
    again, they resume from the newest checkpoint although --resume was not given, and end equal to the
    uninterrupted run."""
    out, _ = two_process_run
    proc = _popen(["--multi_gpu", "--num_processes", "2", "--max_restarts", "1", "--main_process_port",
                   str(_free_port())], "--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--checkpoint-every",
                  "1", "--output-dir", str(tmp_path))
    _wait_for(tmp_path / "checkpoints" / "step_000000002", proc)  # step 2 of 3 in epoch 1
    os.kill(_worker_pid(proc.pid, 0), signal.SIGKILL)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-4000:]
    restarted = next(line for line in log.splitlines() if line.startswith("restart 1 of this job's processes"))
    assert "resuming from the newest checkpoint" in restarted and log.count("resumed from") == 1
    _weights_close(tmp_path, out, exact=True)
    assert _results(tmp_path)["steps"] == 6


def test_a_failed_save_on_rank_0_ends_both_processes_at_once_with_one_line_each(data, tmp_path):
    """A real write failure: the kernel's file-size limit (RLIMIT_FSIZE, 1 MB) lets the small files through and
    refuses the checkpoint's weights, which rank 0 writes; the run must end in seconds, not at the collective
    timeout, saying which rank failed and why."""
    started = time.time()
    proc = _popen(["--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port())],
                  "--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--checkpoint-every", "1",
                  "--output-dir", str(tmp_path),
                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)))
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and time.time() - started < 60, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert any(line.startswith("error: rank 0 of 2: could not write checkpoint") and "File too large" in line
               for line in errors), log[-3000:]
    # No traceback from the training processes (torchelastic's own report of the failure follows ours).
    assert not [line for line in log.splitlines() if line.startswith("[rank") and "Traceback" in line], log[-3000:]


def test_sigterm_to_the_launcher_stops_both_processes_at_one_step_and_they_resume_to_the_same_weights(
        data, two_process_run, tmp_path):
    """What SLURM's and Kubernetes' notice does: torchelastic passes the launcher's SIGTERM to its workers, which
    agree on a step, write one checkpoint there and stop with a line each (EXIT_PREEMPTED each; the launcher then
    exits 1, re-raising its own signal); --resume auto ends on the uninterrupted run's weights."""
    out, _ = two_process_run
    args = ["--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--output-dir", str(tmp_path)]
    proc = _popen(["--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port())], *args)
    # Sent before the first step: the agreement is read one step after it is started, so the stop comes at step 1
    # or 2 (mid-epoch); only a loaded machine delaying the signal past step 2 makes it the epoch's end.
    log = signal_on_line(proc, "recipe torchvision:", signal.SIGTERM)
    stopped = _results(tmp_path)["stopped"]
    stops = sorted(line for line in log.splitlines() if line.startswith("rank ") and "stopping at step" in line)
    assert stops == [f"rank {r} of 2: stopping at step {stopped['step']} on SIGTERM: checkpoint {stopped['checkpoint']}; "
                     "resume with --resume auto" for r in (0, 1)], log[-3000:]
    assert proc.returncode == 1, log[-3000:]
    name = f"step_{stopped['step']:09d}" if stopped["step"] < 3 else "epoch_0001"
    assert (tmp_path / "checkpoints" / name).is_dir() and Path(stopped["checkpoint"]).name == name, stopped

    done = _ok(run_cli(*args, "--resume", "auto", launcher=launcher(2), env=CPU))
    assert "resumed from" in done.stdout
    _weights_close(tmp_path, out, exact=True)


COMPILED = ["--compile", "--compile-backend", "aot_eager"]  # dynamo's tracing and autograd, no kernel generation


def _compile_figures(out):
    results = _results(out)
    return results["compiled_graphs"], results["graph_breaks"], [h["compiled_graphs"] for h in results["history"]]


def test_compiled_under_ddp_two_processes_have_no_graph_break_compile_once_and_train_the_same_weights(
        data, two_process_run, tmp_path):
    """--compile with 2 gloo processes: DDP around the model compiled in place, normalisation inside its graph.
    No graph break, training's graph compiled once for both epochs (validation's once), and the weights are the
    eager run's bit for bit (aot_eager runs the traced graph's own ops)."""
    eager, _ = two_process_run
    out = tmp_path / "compiled"
    _ok(run_cli("--data", str(data), *PLAIN, "-b", "4", "--epochs", "2", "--output-dir", str(out), *COMPILED,
                launcher=launcher(2), env=CPU))
    graphs, breaks, per_epoch = _compile_figures(out)
    assert breaks == 0
    assert per_epoch == [2, 2] and graphs == 2  # training's and validation's, and nothing more in epoch 2
    _weights_close(out, eager, exact=True)


def test_compiled_with_ema_and_mixup_compiles_a_smaller_last_validation_batch_once(data, tmp_path):
    """One process, 12 validation images in batches of 5: the last batch of 2 compiles once more (dynamic), no
    more in the next epoch; the EMA copy and mixup take the uint8 batches the compiled model normalises."""
    out = tmp_path / "compiled1"
    done = _ok(run_cli("--data", str(data), *PLAIN, "-b", "5", "--epochs", "2", "--output-dir", str(out), *COMPILED,
                       "--model-ema", "--mixup-alpha", "0.2", env=CPU))
    graphs, breaks, per_epoch = _compile_figures(out)
    assert (graphs, breaks, per_epoch) == (3, 0, [3, 3]), done.stdout[-2000:]
    assert "torch.compile so far: 3 graph(s) compiled, 0 graph break(s)" in done.stdout
    assert "ema_acc1" in _results(out)
