import shutil

import datasets
import numpy as np
import pytest
from conftest import class_image, make_image_folder
from PIL import Image

from vgg16.data.images import to_rgb
from vgg16.errors import UsageError
from vgg16.data.sources import load_source


def test_image_folder_classes_sorted_like_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = make_image_folder(tmp_path / "d", classes=("zebra", "ant", "Moose"))
    data = load_source(str(root), seed=0)
    reference = ImageFolder(str(root / "train"))
    assert data.class_names == reference.classes == ["Moose", "ant", "zebra"]
    paths = data.train.cast_column("image", datasets.Image(decode=False))["image"]
    assert [p for p, _ in reference.samples] == [x["path"] for x in paths]
    assert data.train["label"] == reference.targets
    assert len(data.val) == 12 and data.small_images  # 40x30 px: below 64, so the 32 px default applies


def test_image_folder_accepts_validation_dir_name(tmp_path):
    data = load_source(str(make_image_folder(tmp_path / "d", val_name="validation")), seed=0)
    assert len(data.val) == 12


def test_every_mode_becomes_rgb(image_folder):
    data = load_source(str(image_folder), seed=0)
    modes = {data.train[i]["image"].mode for i in range(len(data.train))}
    assert {"RGB", "L", "RGBA", "P", "CMYK"} <= modes
    assert {to_rgb(data.train[i]["image"]).mode for i in range(len(data.train))} == {"RGB"}
    assert to_rgb(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))).getpixel((0, 0)) == (255, 255, 255)


def test_train_and_val_class_lists_must_match(tmp_path):
    root = make_image_folder(tmp_path / "d")
    shutil.rmtree(root / "val" / "dog")
    (root / "val" / "wolf").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "wolf" / "a.png")
    with pytest.raises(UsageError, match=r"only in train: dog; only in validation: wolf"):
        load_source(str(root), seed=0)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "empty folder"),
    (lambda p: (p / "val" / "a").mkdir(parents=True) or Image.new("RGB", (8, 8)).save(p / "val" / "a" / "x.png"),
     "no train/ folder"),
    (lambda p: (p / "train" / "a").mkdir(parents=True) or (p / "val" / "a").mkdir(parents=True),
     "class folders without images"),
])
def test_bad_folders_name_the_problem(tmp_path, make, message):
    path = tmp_path / "bad"
    make(path)
    with pytest.raises(UsageError, match=message):
        load_source(str(path), seed=0)


def test_missing_path_is_an_error_not_a_hub_lookup(tmp_path):
    with pytest.raises(UsageError, match="no such file or directory"):
        load_source(str(tmp_path / "nope" / "imagenet"), seed=0)


def test_hub_name_offline_gives_one_clear_error():
    with pytest.raises(UsageError, match="could not be loaded from the hub"):
        load_source("someone/not-a-cached-dataset", seed=0)


def test_cifar10_python_batches(cifar_batches):
    data = load_source(str(cifar_batches), seed=0)  # the parent of cifar-10-batches-py works too
    assert data.class_names[:3] == ["airplane", "automobile", "bird"] and data.small_images
    assert (len(data.train), len(data.val)) == (40, 10)
    first = np.asarray(data.train[3]["image"])
    assert first.shape == (32, 32, 3) and data.train[3]["label"] == 3
    assert np.array_equal(first, class_image(3, np.random.default_rng(1), (32, 32))) is False  # noise differs
    assert first[:, 24:32, 0].min() == 255  # class 3's bar, channel 0, columns 24-31, survived the round trip


def test_cifar_pickle_with_code_is_refused(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}))
    with pytest.raises(UsageError, match="refusing to unpickle builtins.print"):
        load_source(str(folder), seed=0)


def _hub_style(n, seed):
    rng = np.random.default_rng(seed)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"img": [Image.fromarray(class_image(i % 3, rng, (32, 32))) for i in range(n)],
                                       "label": [i % 3 for i in range(n)]}, features=features)


def test_hub_parquet_layout_with_img_column(tmp_path):
    folder = tmp_path / "cifar10" / "plain_text"
    folder.mkdir(parents=True)
    _hub_style(12, 0).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    _hub_style(6, 1).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    data = load_source(str(tmp_path / "cifar10"), seed=0)
    assert data.train.column_names == ["image", "label"]
    assert data.class_names == ["a", "b", "c"] and (len(data.train), len(data.val)) == (12, 6)
    assert data.small_images


def test_save_to_disk_dataset_dict_and_single_dataset(tmp_path):
    datasets.DatasetDict({"train": _hub_style(12, 0), "validation": _hub_style(6, 1)}).save_to_disk(str(tmp_path / "dd"))
    data = load_source(str(tmp_path / "dd"), seed=0)
    assert (len(data.train), len(data.val)) == (12, 6)
    _hub_style(30, 0).save_to_disk(str(tmp_path / "single"))
    data = load_source(str(tmp_path / "single"), seed=0)
    assert (len(data.train), len(data.val)) == (27, 3) and "holding out 10%" in data.notes[0]


def test_embedded_digits_are_real_and_offline():
    data = load_source(None, seed=0)
    assert data.name == "digits" and data.class_names == [str(i) for i in range(10)]
    assert (len(data.train), len(data.val)) == (1437, 360) and data.small_images
    image = np.asarray(data.train[0]["image"])
    assert image.shape == (8, 8) and 0 < image.mean() < 255 and len(np.unique(image)) > 4


@pytest.mark.parametrize("layout", ["class-folders", "train-only"])
def test_folders_without_a_validation_split_hold_one_out(tmp_path, layout):
    """torchvision ImageFolder's own layout (root/<class>/*), and train/ without val/: a seeded, stratified 10%
    is held out, said in a note, and every image lands in exactly one split."""
    root = make_image_folder(tmp_path / "d", n_train=10, n_val=0)
    shutil.rmtree(root / "val")
    if layout == "class-folders":
        for folder in (root / "train").iterdir():
            folder.rename(root / folder.name)
        (root / "train").rmdir()
    data = load_source(str(root), seed=3)
    assert data.class_names == ["cat", "dog", "eel"] and len(data.train) + len(data.val) == 30
    assert sorted(data.val["label"]) == [0, 1, 2]  # stratified: one of each class in a 10% hold-out of 30
    assert "no validation split: holding out 10%" in data.notes[0]
    again = load_source(str(root), seed=3)
    assert again.val["image"] == data.val["image"]  # seeded
    paths = [p["path"] for p in data.train.cast_column("image", datasets.Image(decode=False))["image"]] + \
        [p["path"] for p in data.val.cast_column("image", datasets.Image(decode=False))["image"]]
    assert len(set(paths)) == 30


def test_a_folder_of_class_folders_trains(tmp_path, capsys):
    from vgg16.runner import main

    root = make_image_folder(tmp_path / "d", n_train=10, n_val=0)
    shutil.rmtree(root / "val")
    for folder in (root / "train").iterdir():
        folder.rename(root / folder.name)
    (root / "train").rmdir()
    assert main(["--data", str(root), "-a", "vgg11", "--image-size", "32", "--epochs", "1", "-b", "4", "-j", "0",
                 "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "holding out 10% of train (3 images, seed" in out and "validation: acc1" in out
