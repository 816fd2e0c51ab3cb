"""Launched by test_streaming under `accelerate launch` (N processes, gloo): builds a --streaming run's inputs
exactly as the trainer does (vgg16.data.inputs.build_inputs, same Accelerator), reads two epochs and a resumed epoch
from them, evaluates a small model through the trainer's evaluate, and has process 0 write what every process
read to the JSON file given.

    python stream_probe.py DATA OUT.json BATCH WORKERS
"""

import json
import sys

import torch
from torch import nn

from vgg16.data.inputs import build_inputs, load_data
from vgg16.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from vgg16.engine import Normalizer, evaluate
from vgg16.launch import make_accelerator
from vgg16.resolve import config_of


def main(data: str, out: str, batch: int, workers: int) -> None:
    cfg = config_of(data=data, streaming=True, batch_size=batch, workers=workers, image_size=32, shuffle_buffer=16)
    accelerator = make_accelerator(cfg)
    inputs = build_inputs(cfg, load_data(cfg, accelerator), accelerator)
    torch.manual_seed(0)
    model = accelerator.prepare(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, len(inputs.class_names))))
    train, val = inputs.prepared_loaders(accelerator)

    def read(epoch: int, skip: int = 0) -> list:
        return [batch[3].tolist() for batch in inputs.epoch_loader(accelerator, train, epoch, skip)]

    record = {"rank": accelerator.process_index, "epochs": [read(0), read(1)], "resumed": read(1, 3),
              "val": [i for batch in val for i in batch[3].tolist()], "len": len(train)}
    metrics = evaluate(model, val, accelerator, Normalizer(IMAGENET_MEAN, IMAGENET_STD, accelerator.device),
                       prepare_batch=inputs.val_prepare)
    record["val_count"] = metrics["count"]
    records = accelerator.gather_for_metrics([record], use_gather_object=True)
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"records": records, "train_rows": inputs.train_images, "val_rows": inputs.val_images}, f)
    accelerator.wait_for_everyone()
    # As the trainer ends: a gloo group left to interpreter shutdown can abort a process (pytorch/pytorch#190489).
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
