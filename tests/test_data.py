import torch

from vgg16.data.pipeline import AugmentedDataset, SyntheticImages, build_loaders, eval_transform, sample_seed, train_transform
from vgg16.data.sources import load_source


def _sets(root, size=32, small=True):
    data = load_source(str(root), seed=0)
    return (AugmentedDataset(data.train, train_transform(image_size=size, small=small), seed=7),
            AugmentedDataset(data.val, eval_transform(resize_size=size if small else round(size * 256 / 224),
                                                      crop_size=size), seed=7))


def test_presets_give_uint8_at_the_requested_size(image_folder):
    train, val = _sets(image_folder, size=32, small=True)
    x, y, bad = train[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and isinstance(y, int) and bad == 0
    train, val = _sets(image_folder, size=72, small=False)  # ImageNet recipe, scaled: crop 72, eval resize 82
    assert train[1][0].shape == (3, 72, 72) and val[1][0].shape == (3, 72, 72)
    t = eval_transform(resize_size=256, crop_size=224)
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
