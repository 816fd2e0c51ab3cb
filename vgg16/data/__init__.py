"""The data path, from where images are to batches on the device:

- `sources`: every `--data` (class folders through `folders`, CIFAR-10, parquet, save_to_disk, the hub, the embedded
  digits) becomes train and validation `datasets.Dataset`s;
- `shards` and `streaming`: `--streaming` reads parquet row groups instead, an equal span per process;
- `pipeline`: transforms, per-sample seeding, synthetic images and the DataLoaders (images stay uint8);
- `decoding` and `gpu_decode`: where a batch is decoded (loader workers, or nvJPEG with `--gpu-decode`);
- `inputs`: the one object the runner asks for its loaders and each epoch's start.
"""
