"""Loader workers reuse their shared-memory batch buffers, and never one the main process still holds."""

import torch
from torch.utils.data import DataLoader, Dataset

from vgg16.data import batch_buffers
from vgg16.data.pipeline import collate_samples


class Patterned(Dataset):
    """uint8 CHW images laid out channels-last, each a function of its index (as decoded JPEGs are laid out)."""

    def __len__(self):
        return 96

    def __getitem__(self, index):
        pixels = (torch.arange(6 * 5 * 3) * 7 + index * 31) % 251
        return pixels.to(torch.uint8).view(6, 5, 3).permute(2, 0, 1), index, 0


def _expected(indices):
    return collate_samples([Patterned()[i] for i in indices])[0]


def test_reused_buffers_hold_every_batch_until_the_main_process_lets_go():
    workers, batch = 2, 4
    loader = DataLoader(Patterned(), batch_size=batch, shuffle=True, num_workers=workers, prefetch_factor=2,
                        persistent_workers=True, collate_fn=collate_samples, generator=torch.Generator().manual_seed(0))
    batches_per_epoch = len(Patterned()) // batch
    start = batch_buffers.received

    # Every batch held: once each worker's slots are all out, new buffers; none of the held ones is written again.
    held = [(images, labels) for images, labels, _ in loader]
    assert len(held) == batches_per_epoch
    for images, labels in held:
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, _expected(labels.tolist()))
    assert batch_buffers.received - start == workers * batch_buffers.SLOTS  # the rest came in new buffers
    del held, images, labels

    # Two more epochs, a view (or a numpy array) of every fifth batch kept: those slots stay out, the rest come
    # back and are reused, more batches than the workers have slots.
    before, kept = batch_buffers.received, []
    for epoch in range(2):
        for step, (images, labels, _) in enumerate(loader):
            assert torch.equal(images, _expected(labels.tolist()))
            if step % 5 == 0:
                kept.append((images[:, 1:, 2:] if epoch else images.numpy()[:, :2], labels))
    assert batch_buffers.received - before > workers * batch_buffers.SLOTS
    for view, labels in kept:
        expected = _expected(labels.tolist())
        expected = expected.numpy()[:, :2] if not isinstance(view, torch.Tensor) else expected[:, 1:, 2:]
        assert (view == expected).all()


def test_outside_a_worker_it_is_a_plain_stack():
    samples = [Patterned()[i] for i in range(3)]
    before = batch_buffers.received
    images = collate_samples(samples)[0]
    assert isinstance(images, torch.Tensor) and batch_buffers.received == before
    assert torch.equal(images, torch.stack([s[0] for s in samples]))


def test_turned_off_every_batch_comes_in_a_new_buffer(monkeypatch):
    monkeypatch.setenv("VGG16_REUSE_BATCH_BUFFERS", "0")
    loader = DataLoader(Patterned(), batch_size=8, num_workers=1, collate_fn=collate_samples)
    before = batch_buffers.received
    for images, labels, _ in loader:
        assert torch.equal(images, _expected(labels.tolist()))
    assert batch_buffers.received == before
