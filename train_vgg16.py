"""Train or evaluate VGG with Accelerate.

    accelerate launch --num_processes 1 train_vgg16.py                       # embedded digits, a few minutes on CPU
    accelerate launch --config_file accelerate_configs/gpu_8p.yaml train_vgg16.py --data /data/imagenet

`python train_vgg16.py --help` lists every option and the old scripts' flags.
"""

import sys

from vgg16.runner import main

if __name__ == "__main__":
    sys.exit(main())
