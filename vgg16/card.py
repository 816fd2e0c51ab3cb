"""The model card (README.md) of an output folder, in the Hugging Face hub's format."""

from __future__ import annotations

import json

from .data.pipeline import eval_sizes
from .report import amp_type, per_class_section, results_table


def exported_accuracy(results: dict) -> tuple[float, float]:
    """Top-1/top-5 of the weights in model.safetensors: the epoch's --best-metric kept (the last by default), of
    the model or its EMA, whichever was exported (fit.EpochLoop records them as `best`); --evaluate's own."""
    figures = results.get("best") or results
    return figures.get("acc1", 0.0), figures.get("acc5", 0.0)


def weights_line(results: dict) -> str:
    best = results.get("best") or {}
    if best.get("metric", "last") != "last":
        return (f"Weights: epoch {best['epoch']}'s of {results.get('epochs', 0)}, the best by "
                f"{best['metric'].replace('_', ' ')} ({best[best['metric']]:.4g}, --best-metric); the last epoch's "
                "are in last/.")
    if "ema_acc1" not in results:
        return "Weights: the trained model's."
    which = "its exponential moving average (--model-ema)" if results.get("exported_weights") == "ema" else "the trained model"
    return (f"Weights: {which}, the better on validation (model top-1 {results['acc1']:.3f}, EMA top-1 "
            f"{results['ema_acc1']:.3f}).")


def model_card(results: dict, model_config: dict) -> str:
    """YAML front matter (library, tags, dataset, metrics with values) and a short human description."""
    dataset = results["dataset"]
    acc1, acc5 = exported_accuracy(results)
    macro_f1 = (results.get("best") or results).get("macro_f1")
    timm_loads = model_config["head"] == "imagenet"  # timm has no small-image head
    front = {
        # timm builds 224 px exports from config.json (hf-hub:USER/NAME), so the hub shows its snippet for them.
        "library_name": "timm" if timm_loads else "pytorch",
        "pipeline_tag": "image-classification",
        "license": "bsd-3-clause",
        "tags": ["image-classification", "vgg", results["arch"], "torchvision", "accelerate", "safetensors"]
        + (["timm"] if timm_loads else []),
        **({"base_model": model_config["base_model"]} if model_config.get("base_model") else {}),
        "datasets": [dataset],
        "metrics": ["accuracy", "f1"],
        "model-index": [{
            "name": f"{results['arch']}-{dataset}",
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"type": dataset, "name": dataset, "split": "validation"},
                "metrics": [
                    {"type": "accuracy", "name": "top-1 accuracy", "value": round(acc1, 3)},
                    {"type": "top_5_accuracy", "name": "top-5 accuracy", "value": round(acc5, 3)},
                    *([{"type": "f1", "name": "macro-F1", "value": round(macro_f1, 3)}] if macro_f1 is not None else []),
                ],
            }],
        }],
    }
    # JSON is valid YAML, and needs no YAML library to write correctly.
    yaml_lines = [f"{k}: {json.dumps(v)}" for k, v in front.items()]
    head = model_config["head"]
    classes = model_config["class_names"]
    shown = ", ".join(classes[:10]) + (f" ... ({len(classes)} in all)" if len(classes) > 10 else "")
    return "\n".join([
        "---", *yaml_lines, "---", "",
        f"# {results['arch']} trained on {dataset}", "",
        f"torchvision's `{results['arch']}` ({'small-image head: global pooling, 512-wide classifier' if head == 'small' else 'the standard ImageNet head'}), "
        f"{model_config['image_size']} px input, {len(classes)} classes: {shown}.", "",
        "## Results", "", results_table([results]),
        f"Top-1 {acc1:.3f}% and top-5 {acc5:.3f}% on {results.get('val_images', 0)} "
        f"validation images, after {results.get('epochs', 0)} epochs ({results.get('steps', 0)} optimizer steps). "
        f"Throughput {results.get('fps', 0):.1f} images/s over {results['num_processes']} process(es) on "
        f"{results.get('device_name', results['device'])}, {amp_type(results)}. {weights_line(results)}", "",
        *([per_class_section(results).strip(), ""] if results.get("per_class") else []),
        "## Use", "",
        "```python",
        "import vgg16  # this repository's package",
        "model = vgg16.from_pretrained(\"PATH_OR_HUB_ID\")  # eval mode; model.config is config.json",
        "```", "",
        f"or with torchvision alone{'' if head == 'imagenet' else ' (after replacing the head as vgg16.build_model does)'}:", "",
        "```python",
        "import torchvision, safetensors.torch",
        f"model = torchvision.models.{results['arch']}(num_classes={len(classes)})",
        *([] if head == "imagenet" else ["# small head: see config.json (head: small)"]),
        "model.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))",
        "```", "",
        *(["or with timm (config.json carries timm's architecture and pretrained_cfg):", "", "```python",
           "import timm",
           "model = timm.create_model(\"hf-hub:USER/NAME\", pretrained=True)  # or \"local-dir:PATH\"",
           "```", ""] if timm_loads else
          ["timm cannot load this model: its small-image head (global pooling, 512-wide classifier) has no timm "
           "counterpart.", ""]),
        f"Inputs: RGB, resized to {eval_sizes(model_config)[0]} px and center-cropped to {eval_sizes(model_config)[1]} px, normalised with mean "
        f"{list(model_config['mean'])} and std {list(model_config['std'])}.", "",
        "## Training", "",
        f"- command: `{results.get('command', '')}`; every option it ran with, resolved: `run.yaml` (rerun it with "
        "`accelerate launch train_vgg16.py --config run.yaml`)",
        f"- global batch {results['global_batch_size']} ({results['per_process_batch_size']} per process x "
        f"{results['num_processes']} x {results['grad_accum']}), recipe {results.get('recipe', '-')}, lr {results['lr']:g}, "
        f"seed {results['seed']}",
        *([f"- started from: {model_config.get('started_from') or model_config['pretrained']}"]
          if model_config.get("pretrained") else ["- started from: random initialisation"]),
        *([f"- frozen: {model_config['frozen']}"] if model_config.get("frozen") else []),
        *([f"- sampler: {results['sampler']} (each class drawn equally often)"] if results.get("sampler") else []),
        *([f"- class weights in the loss: {results['class_weights']}"] if results.get("class_weights") else []),
        *([f"- features trained at lr x {model_config['backbone_lr_scale']:g}"]
          if model_config.get("backbone_lr_scale") is not None else []),
        f"- torch {results['torch']}, accelerate {results['accelerate']}", "",
    ])
