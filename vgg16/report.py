"""What a run leaves for people: the seed's results table (results.md), curves.png, and
`python -m vgg16.report RUN_DIR [RUN_DIR ...]`, which merges runs into one table.

    python -m vgg16.report output_1p_gpu output_8p_npu > table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .class_metrics import per_class_markdown

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class RunResults:
    """results.json: what the run was, then its figures (after every epoch, or from --evaluate) and its status.
    A key whose value is None is left out of the file (a first epoch not yet finished has no acc1)."""
    arch: str
    dataset: str
    image_size: int
    head: str
    num_classes: int
    train_images: int
    global_batch_size: int
    per_process_batch_size: int
    grad_accum: int
    num_processes: int
    mixed_precision: str
    device: str
    device_name: str
    torch: str
    accelerate: str
    lr: float
    """The lr used: --lr, times global batch / 256 with --lr-scale-by-batch."""
    base_lr: float
    lr_scaled_by_batch: bool
    seed: int
    recipe: str
    pretrained: Optional[str] = None
    sampler: Optional[str] = None
    """--sampler balanced, with the draws per epoch when --epoch-size gave them (unset: every image once)."""
    class_weights: Optional[str] = None
    """--class-weights: balanced or the file."""
    command: str = ""
    status: str = "running"
    """running, preempted (`stopped` says where) or finished."""
    history: Optional[list] = None
    """One entry per epoch: steps, train and validation loss, top-1/top-5, fps (and the EMA's figures)."""
    acc1: Optional[float] = None
    acc5: Optional[float] = None
    best_acc1: Optional[float] = None
    val_images: Optional[int] = None
    val_loss: Optional[float] = None
    train_loss: Optional[float] = None
    fps: Optional[float] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None
    bad_images: Optional[int] = None
    fp16_skipped_steps: Optional[int] = None
    train_seconds: Optional[float] = None
    exported_weights: Optional[str] = None
    macro_f1: Optional[float] = None
    """Mean F1 over the classes with validation images (vgg16.class_metrics)."""
    balanced_acc: Optional[float] = None
    """Mean recall over the classes with validation images."""
    per_class: Optional[list] = None
    """The last validation's precision, recall, F1 and support per class (of the weights exported)."""
    confusion: Optional[list] = None
    """The last validation's confusion matrix: rows the true class, columns the predicted one."""
    best: Optional[dict] = None
    """The epoch whose weights model.safetensors holds (--best-metric; the last with "last"), the metric and its
    figures."""
    ema_acc1: Optional[float] = None
    ema_acc5: Optional[float] = None
    ema_macro_f1: Optional[float] = None
    evaluated: Optional[str] = None
    """--evaluate: the weights evaluated."""
    stopped: Optional[dict] = None
    """A preempted run: {signal, step, checkpoint}."""
    compiled_graphs: Optional[int] = None
    """--compile: graphs torch.compile compiled in the main process (training's, validation's, its last batch's)."""
    graph_breaks: Optional[int] = None

    @classmethod
    def start(cls, cfg: "TrainConfig", *, dataset: str, num_classes: int, train_images: int, launch: dict, lr: float,
              pretrained: Optional[str], command: str) -> "RunResults":
        """results.json at a run's start: the run as resolved; `launch` is vgg16.launch.launch_facts' (the
        processes, precision, device and versions)."""
        from .model import head_for

        global_batch = cfg.batch_size * launch["num_processes"] * cfg.grad_accum
        return cls(arch=cfg.arch, dataset=dataset, image_size=cfg.image_size, head=head_for(cfg.image_size),
                   num_classes=num_classes,
                   train_images=train_images, global_batch_size=global_batch, per_process_batch_size=cfg.batch_size,
                   grad_accum=cfg.grad_accum, lr=lr, base_lr=cfg.lr, lr_scaled_by_batch=cfg.lr_scale_by_batch,
                   seed=cfg.seed, recipe=cfg.recipe, pretrained=pretrained, command=command,
                   sampler=(cfg.sampler + (f", {cfg.epoch_size} draws an epoch" if cfg.epoch_size else ""))
                   if cfg.sampler != "shuffle" else None, class_weights=cfg.class_weights, **launch)

    def update(self, **values) -> None:
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"not a results.json key: {sorted(unknown)}")
        for name, value in values.items():
            setattr(self, name, value)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU", "npu": "NPU"}
COLUMNS = ("NAME", "Acc@1", "Acc@5", "FPS", "Epochs", "AMP_Type", "Torch", "Device")


def run_name(results: dict) -> str:
    """The seed's NAME column: processes and device, e.g. 1p-GPU, 8p-NPU."""
    return f"{results['num_processes']}p-{DEVICE_NAMES.get(results['device'], results['device'].upper())}"


def amp_type(results: dict) -> str:
    return {"no": "fp32"}.get(results["mixed_precision"], results["mixed_precision"])


def table_row(results: dict) -> list:
    return [run_name(results), f"{results.get('acc1', 0):.3f}", f"{results.get('acc5', 0):.3f}",
            f"{results.get('fps', 0):.1f}", str(results.get("epochs", 0)), amp_type(results),
            results["torch"].split("+")[0], results.get("device_name", results["device"])]


def results_table(runs: Sequence[dict]) -> str:
    """Markdown in the seed's layout, one row per run, sorted so 1p rows precede 8p rows and GPU sits by NPU."""
    rows = [table_row(r) for r in sorted(runs, key=lambda r: (r["num_processes"], r["device"]))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results_md(output_dir: Path, results: dict) -> None:
    text = (f"# {results['arch']} on {results['dataset']}\n\n" + results_table([results]) +
            f"\nGlobal batch {results['global_batch_size']} ({results['per_process_batch_size']} per process x "
            f"{results['num_processes']} processes x {results['grad_accum']} accumulation), lr {results['lr']:g}, "
            f"{results.get('steps', 0)} optimizer steps, {results.get('val_images', 0)} validation images, "
            f"recipe {results.get('recipe', '-')}.\n"
            + (f"\nEMA of the weights: Acc@1 {results['ema_acc1']:.3f}, Acc@5 {results['ema_acc5']:.3f}; exported: "
               f"{results.get('exported_weights', 'model')}.\n" if "ema_acc1" in results else "")
            + per_class_section(results))
    (output_dir / "results.md").write_text(text)


def per_class_section(results: dict) -> str:
    """Macro-F1, balanced accuracy and the per-class table (results.md and the model card)."""
    if not results.get("per_class"):
        return ""
    return (f"\n## Per class\n\nMacro-F1 {results['macro_f1']:.3f}, balanced accuracy (mean recall) "
            f"{results['balanced_acc']:.3f}, over the classes with validation images; the confusion matrix is in "
            "results.json and confusion.png.\n\n" + per_class_markdown(results["per_class"]))


def plot_curves(history: Sequence[dict], path: Path, title: str) -> None:
    """curves.png: training and validation loss, top-1/top-5 and FPS against epoch."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; chosen here so importing this module sets no global state
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_fps) = plt.subplots(1, 3, figsize=(13, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s--", label="validation")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["acc1"] for h in history], "o-", label="top-1")
    ax_acc.plot(epochs, [h["acc5"] for h in history], "s--", label="top-5")
    if all("macro_f1" in h for h in history):
        ax_acc.plot(epochs, [h["macro_f1"] for h in history], "d:", label="macro-F1")
    if any("ema_acc1" in h for h in history):
        ax_acc.plot(epochs, [h.get("ema_acc1") for h in history], "^-", label="EMA top-1")
        ax_acc.plot(epochs, [h.get("ema_acc5") for h in history], "v--", label="EMA top-5")
    ax_acc.set(title="validation accuracy (%)", xlabel="epoch", ylim=(0, 100))
    ax_acc.legend(loc="lower right")
    ax_fps.bar(epochs, [h["fps"] for h in history], color="tab:gray")
    ax_fps.set(title="training images/s (all processes)", xlabel="epoch")
    for ax in (ax_loss, ax_acc, ax_fps):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.report", description="Merge runs into the seed's table.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders holding results.json")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        path = Path(run) / "results.json"
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"error: cannot read {path} ({e})", file=sys.stderr)
            return 2
    sys.stdout.write(results_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
