"""Image data: IDX files (and a wrong magic number), CIFAR-10 batches written
here in the official pickle format, image folders, the generated set,
augmentation and normalisation; each bad input gives one clear DataError."""
import gzip
import pickle

import numpy as np
import pytest

from conftest import data_file
from mingpt_c.vit import images as imgs
from mingpt_c.errors import DataError


def write_idx(path, arr, magic, gz=True):
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_mnist(d, n=20, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split in ("train", "t10k"):
        write_idx(d / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), 2051, gz)
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10, 2049, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    fake_mnist(tmp_path, gz=gz)
    train, test = imgs.load_splits(f"mnist:{tmp_path}")
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype == np.uint8
    assert list(test.labels[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.classes == [str(i) for i in range(10)]


def test_idx_wrong_magic(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)), 2049)  # a label magic
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        imgs.load_splits(f"mnist:{tmp_path}")


def test_idx_truncated_and_missing(tmp_path):
    fake_mnist(tmp_path)
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        imgs.load_splits(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-images"):
        imgs.load_splits(f"mnist:{tmp_path}")


def test_real_mnist_header():
    d = data_file("mnist")
    labels = imgs.read_idx(d / "t10k-labels-idx1-ubyte.gz", imgs.IDX_LABELS)
    assert list(labels[:8]) == [7, 2, 1, 0, 4, 1, 4, 9]


def test_bad_specs(tmp_path):
    with pytest.raises(DataError, match="KIND:PATH"):
        imgs.load_splits("imagenet:/x")
    with pytest.raises(DataError, match="does not exist"):
        imgs.load_splits(f"mnist:{tmp_path / 'nope'}")

# ---------------------------------------------------------------- CIFAR-10


def write_cifar(d, n=6, seed=0):
    """Batches as the official cifar-10-batches-py: pickled dicts with bytes
    keys, data (N, 3072) uint8 (R, G, B planes), labels a list of ints."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        batches[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in imgs.CIFAR10_CLASSES], b"num_vis": 3072,
                     b"num_cases_per_batch": n}, f, protocol=2)
    return batches


def test_cifar10_reader(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    train, test = imgs.load_splits(f"cifar10:{tmp_path}")   # the parent folder works too
    assert train.images.shape == (12, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    # pixel (row 1, col 2) of image 0 of batch 2: R at 32+2, G at 1024+34, B at 2048+34
    assert list(train.images[6, :, 1, 2]) == [data[0, 34], data[0, 1024 + 34], data[0, 2048 + 34]]
    assert list(train.labels[6:]) == labels
    assert test.classes[3] == "cat"


def test_cifar10_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        imgs.load_splits(f"cifar10:{tmp_path}")


def test_cifar10_bad_batch(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="3072"):
        imgs.load_splits(f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a CIFAR-10"):
        imgs.load_splits(f"cifar10:{tmp_path}")

# ---------------------------------------------------------------- folders


def write_folder(d, classes=("cat", "dog"), n=3, size=(8, 8), mode="L"):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in classes:
        (d / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(d / c / f"{i}.png")


def test_folder_reader(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", n=2)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")   # hidden files are skipped
    train, test = imgs.load_splits(f"folder:{tmp_path}")
    assert train.images.shape == (6, 1, 8, 8) and len(test) == 4
    assert train.classes == ["cat", "dog"] and list(train.labels) == [0, 0, 0, 1, 1, 1]


def test_folder_rgb_holdout_and_resize(tmp_path):
    write_folder(tmp_path, n=5, size=(10, 10), mode="RGB")
    train, val = imgs.load_splits(f"folder:{tmp_path}", image_size=8, val_fraction=0.2)
    assert train.images.shape == (8, 3, 8, 8) and len(val) == 2


def test_folder_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        imgs.load_splits(f"folder:{tmp_path / 'empty'}")
    write_folder(tmp_path / "a")
    (tmp_path / "a" / "bird").mkdir()
    with pytest.raises(DataError, match="bird: class folder has no images"):
        imgs.load_splits(f"folder:{tmp_path / 'a'}")
    write_folder(tmp_path / "b")
    (tmp_path / "b" / "dog" / "notes.txt").write_text("hello")   # not an image: skipped, with a note
    write_folder(tmp_path / "b2")
    assert len(imgs.read_folder(tmp_path / "b")) == len(imgs.read_folder(tmp_path / "b2"))
    assert "skipped 1 file(s)" in capsys.readouterr().err
    write_folder(tmp_path / "c")
    write_folder(tmp_path / "c", classes=("dog",), n=1, size=(9, 8))
    with pytest.raises(DataError, match="--image-size"):
        imgs.load_splits(f"folder:{tmp_path / 'c'}")
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="broken.png"):
        imgs.load_splits(f"folder:{tmp_path / 'd'}")

# ---------------------------------------------------------------- generated, augmentation


def test_generated_shapes_are_deterministic_and_balanced():
    a, at = imgs.generated_shapes(n_train=400, n_test=80)
    b, _ = imgs.generated_shapes(n_train=400, n_test=80)
    assert np.array_equal(a.images, b.images)
    assert a.images.shape == (400, 1, 28, 28)
    assert np.bincount(a.labels, minlength=8).min() > 30
    assert a.images.max() > 150 and len(at) == 80


def test_augment(rng):
    x = rng.integers(1, 256, (16, 3, 6, 6)).astype(np.uint8)
    assert np.array_equal(imgs.augment(x, rng), x)
    y = imgs.augment(x, np.random.default_rng(0), crop_pad=2)
    assert y.shape == x.shape and not np.array_equal(x, y)
    for a, b in zip(x, y):   # every output is a shifted copy: its non-zero pixels come from a
        nz = b[b > 0]
        assert set(nz.tolist()) <= set(a.flatten().tolist())
    f = imgs.augment(x, np.random.default_rng(0), hflip=True)
    flipped = [np.array_equal(f[i], x[i, :, :, ::-1]) for i in range(16)]
    same = [np.array_equal(f[i], x[i]) for i in range(16)]
    assert all(p or q for p, q in zip(flipped, same)) and any(flipped) and any(same)


def test_normalizer():
    n = imgs.Normalizer([0.5, 0.25, 0.0], [0.5, 0.5, 1.0])
    x = np.array([0, 255, 51], np.uint8).reshape(1, 3, 1, 1)
    assert np.allclose(n(x).ravel(), [-1.0, 1.5, 0.2])
