"""Recipe options behave as torchvision's classification reference defines them, and stay exact under resume."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import ROOT, kill_when, make_photo_folder, run_cli
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from vgg16.cli import parse_args, read_command
from vgg16.data.pipeline import MEAN_PIXEL, AugmentedDataset, RepeatedAugmentation, eval_transform, train_transform
from vgg16.ema import ModelEMA, ema_decay
from vgg16.mixing import BatchMixer
from vgg16.model import build_model
from vgg16.optim import build_optimizer, lr_factor, parameter_groups
from vgg16.recipes import RECIPES, recipe_table_markdown
from vgg16.resolve import RunFacts, resolve_config
from vgg16.data.sources import load_source


# ---------------------------------------------------------------- recipes and the command line
def test_readme_shows_the_recipe_table_exactly():
    assert recipe_table_markdown() in (ROOT / "docs" / "recipes.md").read_text()


def test_todays_commands_keep_their_meaning():
    with_data, embedded = parse_args(["--data", "x"]), parse_args([])
    assert (with_data.recipe, with_data.arch, with_data.lr, with_data.epochs, with_data.lr_scheduler) == \
        ("torchvision", "vgg16", 0.01, 90, "step")
    assert (embedded.recipe, embedded.arch, embedded.lr, embedded.hflip) == ("digits", "vgg16_bn", 0.05, 0.0)
    assert parse_args(["--data", "x", "-a", "vgg16_bn"]).lr == 0.1  # torchvision trained vgg16_bn at 0.1


def test_recipe_fills_only_what_was_not_given():
    cfg = parse_args(["--data", "x", "--recipe", "modern", "--mixup-alpha", "0", "--no-model-ema", "--lr", "0.3"])
    assert (cfg.mixup_alpha, cfg.model_ema, cfg.lr) == (0.0, False, 0.3)
    assert (cfg.cutmix_alpha, cfg.auto_augment, cfg.label_smoothing, cfg.norm_weight_decay) == (1.0, "ta_wide", 0.1, 0.0)
    assert (cfg.image_size, cfg.val_resize_size, cfg.val_crop_size) == (176, 232, 224)
    small = resolve_config(read_command(["--data", "x", "--recipe", "modern"]), RunFacts(small_images=True))
    assert (small.image_size, small.val_resize_size, small.val_crop_size) == (32, 32, 32)  # recipe sizes: ImageNet's
    sized = parse_args(["--data", "x", "--recipe", "modern", "--train-crop-size", "160"])
    assert (sized.image_size, sized.val_resize_size, sized.val_crop_size) == (160, 183, 160)
    assert parse_args(["--data", "x", "--nesterov"]).opt == "sgd_nesterov"
    assert parse_args(["--data", "x", "--lr-scheduler", "CosineAnnealingLR"]).lr_scheduler == "cosine"
    for name in RECIPES:  # every recipe builds a valid config
        assert parse_args(["--data", "x", "--recipe", name]).recipe == name


# ---------------------------------------------------------------- transforms
def test_auto_augment_and_random_erase_are_torchvisions():
    kinds = {"ra": v2.RandAugment, "ta_wide": v2.TrivialAugmentWide, "augmix": v2.AugMix, "imagenet": v2.AutoAugment,
             "cifar10": v2.AutoAugment}
    for policy, kind in kinds.items():
        steps = train_transform(image_size=64, small=False, auto_augment=policy, random_erase=0.25).transforms
        assert isinstance(steps[2], kind) and isinstance(steps[-1], v2.RandomErasing)
        assert steps[-1].p == 0.25
    # The uint8 image is erased with the mean colour: 0 after normalisation, as torchvision erases the float one.
    erase = v2.RandomErasing(p=1.0, value=MEAN_PIXEL)
    out = erase(torch.full((3, 32, 32), 7, dtype=torch.uint8))
    changed = (out != 7).any(0)
    assert changed.any() and [int(out[c][changed][0]) for c in range(3)] == MEAN_PIXEL


def test_repeated_copies_get_their_own_augmentation(tmp_path):
    data = load_source(str(make_photo_folder(tmp_path / "p", n_train=2, n_val=1)), seed=0)
    ds = AugmentedDataset(data.train, train_transform(image_size=32, small=False, auto_augment="ta_wide"), seed=3)
    n = len(ds)
    a, b = ds[1][0], ds[1 + n][0]  # the same image, two copies
    assert ds[1][1] == ds[1 + n][1] and not torch.equal(a, b) and torch.equal(a, ds[1][0])


# ---------------------------------------------------------------- mixup / cutmix
def test_mixed_labels_sum_to_one_and_draws_are_seeded():
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    mixer = BatchMixer(5, mixup_alpha=0.2, cutmix_alpha=1.0, seed=1)
    x, y = mixer(images.clone(), labels, epoch=0, micro_step=3)
    assert y.shape == (8, 5) and torch.allclose(y.sum(1), torch.ones(8))
    assert not torch.equal(x, images)
    x2, y2 = mixer(images.clone(), labels, epoch=0, micro_step=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same (seed, epoch, step): same mix
    draws = {round(float(mixer(images.clone(), labels, epoch=0, micro_step=s)[1].max()), 6) for s in range(6)}
    assert len(draws) > 1
    state = torch.get_rng_state()
    mixer(images.clone(), labels, epoch=1, micro_step=0)
    assert torch.equal(state, torch.get_rng_state())  # dropout's generator is untouched
    assert BatchMixer(5, mixup_alpha=0, cutmix_alpha=0, seed=1)(images, labels, epoch=0, micro_step=0)[1] is labels


# ---------------------------------------------------------------- EMA
def test_ema_decay_is_rescaled_as_torchvision_does():
    # train.py: adjust = world_size * batch_size * model_ema_steps / epochs; alpha = min(1, (1 - decay) * adjust)
    assert ema_decay(0.99998, world_size=8, batch_size=32, ema_steps=32, epochs=90) == \
        pytest.approx(1 - (1 - 0.99998) * 8 * 32 * 32 / 90)
    assert ema_decay(0.5, world_size=8, batch_size=256, ema_steps=32, epochs=1) == 0.0  # alpha capped at 1


def test_ema_updates_every_n_steps_and_copies_during_warmup():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.9, every=2, warmup_epochs=1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.after_step(model, step_in_epoch=0, epoch=0)  # warm-up: a copy
    assert torch.equal(ema.module.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.after_step(model, step_in_epoch=0, epoch=0)
    assert torch.equal(ema.module.weight, model.weight)  # still copying during warm-up
    ema.after_step(model, step_in_epoch=0, epoch=1)  # counter was reset, so this first update copies as well
    with torch.no_grad():
        model.weight.fill_(13.0)
    ema.after_step(model, step_in_epoch=1, epoch=1)  # not a multiple of every=2: no update
    assert torch.allclose(ema.module.weight, torch.full((2, 2), 3.0))
    ema.after_step(model, step_in_epoch=2, epoch=1)
    assert torch.allclose(ema.module.weight, torch.full((2, 2), 0.9 * 3 + 0.1 * 13))


# ---------------------------------------------------------------- optimizer and schedule
def test_norm_and_bias_weight_decay_groups():
    model = build_model("vgg11_bn", 3, head="small")
    groups = parameter_groups(model, 1e-4, norm_weight_decay=0.0, bias_weight_decay=0.0)
    by_wd: dict = {}
    for g in groups:
        by_wd.setdefault(g["weight_decay"], set()).update(id(p) for p in g["params"])
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert {id(m.weight) for m in bns} <= by_wd[0.0] and {id(m.bias) for m in bns + convs} <= by_wd[0.0]
    assert by_wd[1e-4] == {id(m.weight) for m in convs}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # Norm decay alone: batch-norm biases follow it, conv biases keep the global decay.
    groups = parameter_groups(model, 1e-4, norm_weight_decay=0.0)
    zero = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert zero == {id(p) for m in bns for p in (m.weight, m.bias)}
    assert len(parameter_groups(model, 1e-4)) == 1


def test_optimizers_are_torchvisions():
    model = nn.Linear(3, 2)
    assert build_optimizer(model, opt="sgd_nesterov", lr=0.1, momentum=0.9, weight_decay=0).defaults["nesterov"]
    rms = build_optimizer(model, opt="rmsprop", lr=0.1, momentum=0.9, weight_decay=1e-5)
    assert isinstance(rms, torch.optim.RMSprop) and (rms.defaults["eps"], rms.defaults["alpha"]) == (0.0316, 0.9)
    assert isinstance(build_optimizer(model, opt="adamw", lr=1e-3, momentum=0.9, weight_decay=0.05), torch.optim.AdamW)


def _torchvision_schedule(method: str, epochs: int, warmup: int, decay: float, lr_min: float) -> list:
    """The lr per epoch from torchvision's own construction: SequentialLR(LinearLR|ConstantLR, CosineAnnealingLR)."""
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.5)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - warmup, eta_min=lr_min)
    warm = (torch.optim.lr_scheduler.LinearLR(opt, start_factor=decay, total_iters=warmup) if method == "linear"
            else torch.optim.lr_scheduler.ConstantLR(opt, factor=decay, total_iters=warmup))
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup])
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_per_epoch_schedule_matches_torchvisions_schedulers(method):
    spe, epochs, warmup = 7, 12, 3
    factor = lr_factor(kind="cosine", steps_per_epoch=spe, total_steps=epochs * spe, warmup_steps=warmup * spe,
                       warmup_method=method, warmup_decay=0.01, min_factor=0.02 / 0.5, per_epoch=True)
    ours = [0.5 * factor(e * spe + k) for e in range(epochs) for k in (0, spe - 1)]
    theirs = [lr for lr in _torchvision_schedule(method, epochs, warmup, 0.01, 0.02) for _ in (0, 1)]
    assert ours == pytest.approx(theirs, rel=1e-6)


# ---------------------------------------------------------------- repeated augmentation
def _torchvision_rasampler(n: int, num_replicas: int, rank: int, seed: int, epoch: int, reps: int) -> list:
    """torchvision references/classification/sampler.py RASampler.__iter__, shuffle=True, up to its final cut."""
    import math

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    indices = torch.randperm(n, generator=g).tolist()
    indices = [ele for ele in indices for i in range(reps)]
    total = int(math.ceil(n * float(reps) / num_replicas)) * num_replicas
    indices += indices[: (total - len(indices))]
    return indices[rank:total:num_replicas]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_repeated_augmentation_gives_each_rank_torchvisions_stream(processes):
    n, batch, reps = 50, 4, 3
    sampler = RepeatedAugmentation(n, batch_size=batch, num_processes=processes, seed=7, reps=reps)
    sampler.set_epoch(2)
    for rank in range(processes):
        # Accelerate's own sharding of the batch sampler, as prepare() does it for this rank.
        got = [i for b in BatchSamplerShard(sampler, num_processes=processes, process_index=rank) for i in b]
        expected = _torchvision_rasampler(n, processes, rank, 7, 2, reps)[:len(got)]
        assert [i % n for i in got] == expected
        assert len(got) == (n // (batch * processes)) * batch
    everything = [i for b in sampler for i in b]
    assert len(set(everything)) == len(everything)  # each copy has its own number, so its own augmentation seed
    counts = torch.bincount(torch.tensor([i % n for i in everything]), minlength=n)
    assert int(counts.max()) <= reps and len(everything) == len(sampler) * batch


# ---------------------------------------------------------------- everything at once, killed and resumed
ALL_OPTIONS = ["-a", "vgg11_bn", "--image-size", "32", "-b", "4", "--epochs", "2", "-j", "1", "-p", "2",
               "--opt", "sgd_nesterov", "--lr", "0.02", "--lr-scheduler", "cosine", "--warmup-epochs", "1",
               "--lr-min", "0.001", "--auto-augment", "ta_wide", "--random-erase", "0.5", "--mixup-alpha", "0.2",
               "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--model-ema", "--model-ema-steps", "2",
               "--norm-weight-decay", "0", "--bias-weight-decay", "0", "--clip-grad-norm", "2", "--ra-sampler",
               "--val-resize-size", "40", "--interpolation", "bicubic", "--checkpoint-every", "3",
               "--freeze-epochs", "1", "--backbone-lr-scale", "0.5"]


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _tensors(path: Path) -> dict:
    return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def _assert_decoded_at_reduced_scale(data: Path) -> None:
    """The run's transforms on this folder (32 px: Resize + RandomCrop) decode every image at 1/2 scale."""
    source = load_source(str(data), seed=0)
    train = AugmentedDataset(source.train, train_transform(image_size=32, small=True, auto_augment="ta_wide",
                                                           random_erase=0.5, interpolation="bicubic"), seed=49)
    val = AugmentedDataset(source.val, eval_transform(resize_size=40, crop_size=32, interpolation="bicubic"), seed=49)
    for split in (train, val):
        for i in range(len(split)):
            assert split[i][0].shape == (3, 32, 32)
    assert (train.decoder.reduced, val.decoder.reduced) == (len(train), len(val))


def test_every_option_at_once_survives_sigkill_bitwise(tmp_path):
    # 32 train images (8 steps per epoch), 160x120: every image decodes at half scale (the resize to 32 and 40 px)
    data = make_photo_folder(tmp_path / "photos", n_train=8, n_val=3, size=(160, 120))
    _assert_decoded_at_reduced_scale(data)
    reference = tmp_path / "reference"
    done = _ok(run_cli("--data", str(data), *ALL_OPTIONS, "--output-dir", str(reference)))
    assert "[torchvision]" in done.stdout and "validation (EMA)" in done.stdout
    r = json.loads((reference / "results.json").read_text())
    assert r["steps"] == 16 and {"ema_acc1", "ema_acc5", "exported_weights"} <= set(r)
    assert all("ema_acc1" in h for h in r["history"])
    assert json.loads((reference / "config.json").read_text())["weights"] == r["exported_weights"]
    # 16 steps, a save every 3 and at each epoch's end: the newest two remain, the newest is the end of epoch 2.
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["epoch_0002", "step_000000015"]

    killed = tmp_path / "killed"
    # Killed mid-epoch 1 (inside the warm-up, features frozen), resumed and killed again mid-epoch 2 (unfrozen).
    kill_when(killed / "checkpoints" / "step_000000003", "--data", str(data), *ALL_OPTIONS, "--output-dir", str(killed))
    assert not (killed / "results.json").exists()
    kill_when(killed / "checkpoints" / "step_000000012", "--data", str(data), *ALL_OPTIONS, "--output-dir", str(killed),
              "--resume", "auto")
    assert json.loads((killed / "results.json").read_text())["epochs"] == 1  # ended in epoch 2
    done = _ok(run_cli("--data", str(data), *ALL_OPTIONS, "--output-dir", str(killed), "--resume", "auto"))
    assert "resumed from" in done.stdout and "epoch 2, step 4 of 8" in done.stdout
    for name in ("model.safetensors", "custom_checkpoint_0.pkl"):  # the model, and the EMA with its count
        a = _tensors(reference / "checkpoints" / "epoch_0002" / name)
        b = _tensors(killed / "checkpoints" / "epoch_0002" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    again = json.loads((killed / "results.json").read_text())
    assert (again["acc1"], again["ema_acc1"], again["exported_weights"]) == \
        (r["acc1"], r["ema_acc1"], r["exported_weights"])
