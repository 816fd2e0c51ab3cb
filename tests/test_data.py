import torch

from vgg16.data.pipeline import (AugmentedDataset, SyntheticImages, build_loaders, eval_transform, sample_seed, seeded,
                                  train_transform)
from vgg16.data.sources import load_source


def _sets(root, size=32, small=True):
    data = load_source(str(root), seed=0)
    return (AugmentedDataset(data.train, train_transform(image_size=size, small=small), seed=7),
            AugmentedDataset(data.val, eval_transform(resize_size=size if small else round(size * 256 / 224),
                                                      crop_size=size, interpolation="bilinear"), seed=7))


def test_presets_give_uint8_at_the_requested_size(image_folder):
    train, val = _sets(image_folder, size=32, small=True)
    x, y, bad = train[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and isinstance(y, int) and bad == 0
    train, val = _sets(image_folder, size=72, small=False)  # ImageNet recipe, scaled: crop 72, eval resize 82
    assert train[1][0].shape == (3, 72, 72) and val[1][0].shape == (3, 72, 72)
    t = eval_transform(resize_size=256, crop_size=224, interpolation="bilinear")
    assert [type(s).__name__ for s in t.transforms] == ["Resize", "CenterCrop", "PILToTensor"]
    assert t.transforms[0].size == [256] and tuple(t.transforms[1].size) == (224, 224)
    r = train_transform(image_size=224, small=False).transforms[0]
    assert (r.scale, r.ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))  # torchvision's reference distribution


def test_augmentation_is_a_function_of_seed_epoch_and_index(image_folder):
    train, _ = _sets(image_folder)
    a = train[5][0]
    assert torch.equal(a, train[5][0])  # same sample, same epoch: same crop and flip
    train.set_epoch(1)
    assert not torch.equal(a, train[5][0])  # a new epoch draws new augmentation
    state = torch.get_rng_state()
    train[3]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (dropout, shuffling) is untouched
    assert len({sample_seed(49, e, i) for e in range(3) for i in range(1000)}) == 3000


def test_batches_do_not_depend_on_worker_count(image_folder):
    train, _ = _sets(image_folder)

    def first_batches(workers):
        loader, _ = build_loaders(train, train, batch_size=4, workers=workers, seed=3, pin_memory=False)
        return [b for b, _ in zip(loader, range(3))]

    for (x0, y0, _), (x2, y2, _) in zip(first_batches(0), first_batches(2)):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_a_batch_fetched_at_once_is_the_samples_fetched_one_by_one(image_folder):
    bad = sorted((image_folder / "train").rglob("*.*"))[2]
    bad.write_bytes(b"\xff\xd8\xff not a JPEG")
    train, _ = _sets(image_folder, size=48, small=False)
    train.set_epoch(2)
    n = len(train)
    # Repeated copies (index + n) and the unreadable row among them, out of order as a shuffled batch is.
    indices = [5, 2, n + 2, 0, n + 5, 1]
    batched = train.__getitems__(indices)
    singly = [train[i] for i in indices]
    assert [(y, b) for _, y, b in batched] == [(y, b) for _, y, b in singly] and batched[1][2] == 1
    for (xb, _, _), (xs, _, _) in zip(batched, singly):
        assert torch.equal(xb, xs)
    assert not torch.equal(batched[0][0], batched[4][0])  # a repeated copy draws its own crop


def test_epoch_reaches_persistent_workers(image_folder):
    train, _ = _sets(image_folder)
    # The unshuffled loader: batches differ between epochs only through augmentation.
    _, persistent = build_loaders(train, train, batch_size=24, workers=1, seed=3, pin_memory=False)
    _, in_process = build_loaders(train, train, batch_size=24, workers=0, seed=3, pin_memory=False)
    epoch0 = next(iter(persistent))[0]
    train.set_epoch(1)
    epoch1 = next(iter(persistent))[0]  # the worker started at epoch 0 must now draw epoch 1's crops
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch1, next(iter(in_process))[0])


def test_synthetic_images():
    ds = SyntheticImages(1000, image_size=48, num_classes=7, seed=0)
    x, y, _ = ds[9]
    assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and y == 9 % 7 and len(ds) == 1000


def test_reduced_scale_decoding_keeps_the_seeded_draws_and_the_picture(tmp_path):
    """400x300 photographs to 64 px: crops of at least 128 px decode at 1/2 or 1/4 scale (validation's resize to
    73 at 1/4). Each sample stays a function of its seed, and is the full decode's picture: the same crop (to
    within half a reduced pixel) and the same flip, so it is far closer to it than to its mirror image."""
    from vgg16.data.images import decode_image
    from vgg16.data.sources import load_source
    from vgg16.tools.photos import make_photo_folder

    data = load_source(str(make_photo_folder(tmp_path / "p", n_train=6, n_val=2, size=(400, 300))), seed=0)
    for split, transform, bound in ((data.train, train_transform(image_size=64, small=False), 8.0),
                                    (data.val, eval_transform(resize_size=73, crop_size=64, interpolation="bilinear"), 2.0)):
        ds = AugmentedDataset(split, transform, seed=7)
        for i in range(len(ds)):
            reduced = ds[i][0].float()
            assert torch.equal(ds[i][0], reduced.to(torch.uint8))  # drawn again from the same seed: the same
            with seeded(sample_seed(7, 0, i)):
                full = transform(decode_image(ds.data[i]["image"])).float()
            difference = (reduced - full).abs().mean()
            assert difference < bound and difference < (reduced - full.flip(-1)).abs().mean() / 2, i
        assert ds.decoder.reduced >= len(ds) * 2 // 4  # it did decode at reduced scale (twice per sample here)


def test_default_workers_share_the_process_cpus_among_local_processes_without_a_cap(monkeypatch):
    import os

    from vgg16.launch import default_workers

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(40)))  # a 40-core share (not this machine)
    assert default_workers(None, 2) == 20  # 20 each, where a cap of 8 would starve a fast GPU
    assert default_workers(3, 2) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # SLURM's 3 of the node's many CPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert default_workers(None, 1) == 1  # 3 CPUs / 2 local processes
