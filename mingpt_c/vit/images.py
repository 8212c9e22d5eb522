"""Image data sets for the ViT: readers, a generated default, augmentation.

Every reader returns an ImageSet: uint8 images (N, ch, H, W), int32 labels
(N,), class names. Data set specs (the CLI's --dataset):

    mnist:DIR, fashion-mnist:DIR   IDX files (gzipped or not), train + t10k
    cifar10:DIR                    the python-pickle batches (data_batch_1..5,
                                   test_batch, batches.meta), as distributed
    folder:DIR                     one sub-folder per class (ImageFolder); with
                                   train/ and test/ (or val/) inside, those are
                                   the splits, else a seeded share is held out
    (none)                         a generated set of shapes: no download

Pickles can run code when loaded, so the CIFAR-10 reader unpickles with a
whitelist: numpy arrays, and nothing else.
Augmentation (random crop with zero padding, horizontal flip) works on uint8
batches in numpy; normalisation ((x/255 - mean) / std per channel) is a
lookup table.
"""
from __future__ import annotations

import functools
import gzip
import io
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mingpt_c.errors import DataError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


@dataclass
class ImageSet:
    images: np.ndarray   # (N, ch, H, W) uint8
    labels: np.ndarray   # (N,) int32
    classes: list        # class names; label i is classes[i]
    source: str          # where it came from, for logs

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple:
        return self.images.shape[2], self.images.shape[3]

    def subset(self, idx) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.source)

# ---------------------------------------------------------------- specs


KINDS = ("mnist", "fashion-mnist", "cifar10", "folder")


def parse_spec(spec: str) -> tuple[str, Path]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise DataError(f"dataset {spec!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)} "
                        f"(e.g. mnist:../shared/data/mnist)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset {spec!r}: {p} does not exist")
    if not p.is_dir():
        raise DataError(f"dataset {spec!r}: {p} is not a directory")
    return kind, p


def load_splits(spec: str | None, image_size: int | None = None, val_fraction: float = 0.1,
                seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, test) for a data set spec; None: the generated shapes."""
    if spec is None:
        return generated_shapes(seed=0)
    kind, path = parse_spec(spec)
    if kind in ("mnist", "fashion-mnist"):
        classes = FASHION_CLASSES if kind == "fashion-mnist" else [str(i) for i in range(10)]
        return (read_idx_split(path, "train", classes, kind), read_idx_split(path, "t10k", classes, kind))
    if kind == "cifar10":
        return read_cifar10(path, "train"), read_cifar10(path, "test")
    splits = _folder_splits(path)
    if splits:
        train = read_folder(splits[0], image_size)
        test = read_folder(splits[1], image_size, classes=train.classes)
        return train, test
    full = read_folder(path, image_size)
    return holdout(full, val_fraction, seed)


def load_eval_split(spec: str | None, image_size: int | None = None) -> ImageSet:
    """The split `vit eval` reads: the test split, or a whole plain folder."""
    if spec is not None:
        kind, path = parse_spec(spec)
        if kind == "folder" and not _folder_splits(path):
            whole = read_folder(path, image_size)
            whole.source += " (no train/ and test/ split: every image, which a run on it has trained on)"
            return whole
    return load_splits(spec, image_size)[1]


def holdout(full: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction {fraction} must be in (0, 1)")
    n = len(full)
    k = max(1, int(round(n * fraction)))
    if n - k < 1:
        raise DataError(f"{full.source}: {n} image(s) are too few to hold out a validation share")
    perm = np.random.default_rng([seed, 77]).permutation(n)
    return full.subset(np.sort(perm[k:])), full.subset(np.sort(perm[:k]))

# ---------------------------------------------------------------- IDX (MNIST)


IDX_IMAGES, IDX_LABELS = 2051, 2049


def _read_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from None
    return raw


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a uint8 array;
    magic is 2051 (images, 3 dims) or 2049 (labels, 1 dim)."""
    path = Path(path)
    raw = _read_maybe_gz(path)
    what = "image" if magic == IDX_IMAGES else "label"
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(f"{path}: not an IDX {what} file (magic number {got}, expected {magic})")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    n = int(np.prod(dims))
    if len(raw) - head != n:
        raise DataError(f"{path}: IDX header says {dims} = {n} bytes of data, the file holds "
                        f"{len(raw) - head} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, n, head).reshape(dims)


def _find(path: Path, names: list[str]) -> Path:
    for n in names:
        for cand in (path / n, path / (n + ".gz")):
            if cand.exists():
                return cand
    raise DataError(f"{path}: no {names[0]}[.gz] file (expected the IDX files of the data set)")


def read_idx_split(path: Path, split: str, classes: list, kind: str) -> ImageSet:
    """split: 'train' or 't10k'."""
    ipath = _find(path, [f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"])
    lpath = _find(path, [f"{split}-labels-idx1-ubyte", f"{split}-labels.idx1-ubyte"])
    images = read_idx(ipath, IDX_IMAGES)
    labels = read_idx(lpath, IDX_LABELS).astype(np.int32)
    if len(images) != len(labels):
        raise DataError(f"{ipath} holds {len(images)} images but {lpath} {len(labels)} labels")
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"{lpath}: label {labels.max()} outside the {len(classes)} classes of {kind}")
    return ImageSet(images[:, None], labels, list(classes), f"{kind} {split} ({ipath.parent})")

# ---------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar10(path: Path, split: str) -> ImageSet:
    """split 'train' (data_batch_1..5) or 'test' (test_batch); PATH may be the
    folder of the batches or its parent (cifar-10-batches-py inside)."""
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [path / n for n in names if (path / n).exists()]
    if not files:
        raise DataError(f"{path}: no {names[0]} file (expected the CIFAR-10 python batches)")
    classes = CIFAR10_CLASSES
    if (path / "batches.meta").exists():
        meta = _unpickle(path / "batches.meta")
        names_ = meta.get("label_names")
        if names_:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_]
    ims, labs = [], []
    for f in files:
        d = _unpickle(f)
        data, labels = d.get("data"), d.get("labels", d.get("fine_labels"))
        if data is None or labels is None:
            raise DataError(f"{f}: not a CIFAR-10 python batch (no data or labels entry)")
        data = np.asarray(data)
        labels = np.asarray(labels, np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{f}: expected data (N, 3072) uint8 and N labels, got data {data.shape} "
                            f"{data.dtype} and {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{f}: label {labels.max()} outside the {len(classes)} classes")
        ims.append(data.reshape(-1, 3, 32, 32))  # channel-major rows: R plane, G plane, B plane
        labs.append(labels.astype(np.int32))
    return ImageSet(np.concatenate(ims), np.concatenate(labs), classes, f"cifar10 {split} ({path})")

# ---------------------------------------------------------------- folders and files


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def open_image(path: str | Path):
    """A Pillow image, fully read; DataError if the file is not one."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def image_channels(im) -> int:
    """1 for grayscale modes, 3 for colour ones (alpha is dropped)."""
    return 1 if im.mode in GRAY_MODES else 3


def image_array(im, channels: int, size: int | None = None) -> np.ndarray:
    """(channels, H, W) uint8 from a Pillow image, resized to size x size if given."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):   # 16-bit samples: rescaled, not clipped at 255
        wide = np.asarray(im, np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(wide * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    im = im.convert("L" if channels == 1 else "RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    a = np.asarray(im, np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _note(msg: str) -> None:
    """One line on stderr about data that was used differently than given."""
    print(f"note: {msg}", file=sys.stderr)


def _folder_splits(path: Path):
    test = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and test is not None:
        return path / "train", test
    return None


def read_folder(path: Path, image_size: int | None = None, classes: list | None = None) -> ImageSet:
    """ImageFolder layout: path/CLASS/IMAGE. Class names are the sorted
    sub-folder names (or the given list, for a test split). Grayscale if
    every image is, else RGB. Hidden files are skipped, and so (with a note)
    are files without an image extension (a readme.txt); a damaged image
    file is an error."""
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise DataError(f"{path}: no class sub-folders (expected one folder of images per class)")
    names = [d.name for d in subdirs]
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{path}: class folder {unknown[0]!r} is not one of the training classes")
    else:
        classes = names
    entries = []
    for d in subdirs:
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"{d}: class folder has no images")
        entries += [(f, classes.index(d.name)) for f in files]
    from PIL import Image

    Image.init()
    image_exts = set(Image.registered_extensions())
    opened, skipped = [], []
    for f, y in entries:   # a readme.txt is skipped; a damaged .png is an error
        if f.suffix.lower() not in image_exts:
            skipped.append(f.name)
            continue
        opened.append((open_image(f), f, y))
    if skipped:
        _note(f"skipped {len(skipped)} file(s) in {path} that are not images: {', '.join(skipped[:5])}"
              + (" ..." if len(skipped) > 5 else ""))
    if not opened:
        raise DataError(f"{path}: no images in its class folders")
    channels = max(image_channels(im) for im, _, _ in opened)
    if image_size is None:
        first = opened[0][0].size
        for im, f, _ in opened:
            if im.size != first:
                raise DataError(f"{f} is {im.size[0]}x{im.size[1]} but {opened[0][1]} is "
                                f"{first[0]}x{first[1]}: pass --image-size to resize them all")
        if first[0] != first[1]:
            raise DataError(f"{opened[0][1]}: images are {first[0]}x{first[1]}, not square: "
                            f"pass --image-size to resize them")
    images = np.stack([image_array(im, channels, image_size) for im, _, _ in opened])
    labels = np.array([y for _, _, y in opened], np.int32)
    return ImageSet(images, labels, list(classes), f"folder {path}")

# ---------------------------------------------------------------- generated shapes


SHAPES = ["disc", "ring", "square", "frame", "triangle", "plus", "cross", "bars"]


@functools.lru_cache(maxsize=2)
def generated_shapes(n_train: int = 8000, n_test: int = 2000, size: int = 28,
                     seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Eight classes of white shapes on black, 28 x 28 grayscale: random
    centre, size, stroke, brightness and noise. Deterministic for a seed;
    needs no download, so `mingpt vit train` runs offline. Cached (read-only
    arrays): a few seconds to draw."""
    rng = np.random.default_rng([seed, 2024])
    n = n_train + n_test
    labels = np.arange(n) % len(SHAPES)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = rng.uniform(11, size - 11, n)[:, None, None]
    cx = rng.uniform(11, size - 11, n)[:, None, None]
    r = rng.uniform(6, 9.5, n)[:, None, None]
    w = rng.uniform(1.2, 2.2, n)[:, None, None]
    dy, dx = yy[None] - cy, xx[None] - cx
    dist = np.sqrt(dy ** 2 + dx ** 2)
    cheb = np.maximum(np.abs(dy), np.abs(dx))
    masks = {
        "disc": dist <= r,
        "ring": np.abs(dist - r) <= w,
        "square": cheb <= r * 0.85,
        "frame": np.abs(cheb - r * 0.85) <= w,
        "triangle": (dy <= r * 0.7) & (dy >= -r * 0.9 + 2 * np.abs(dx) * 0.9),
        "plus": ((np.abs(dy) <= w) | (np.abs(dx) <= w)) & (cheb <= r),
        "cross": ((np.abs(dy - dx) <= w * 1.4) | (np.abs(dy + dx) <= w * 1.4)) & (cheb <= r),
        "bars": (np.mod(dy + r, 2 * w + 3) < 2 * w) & (cheb <= r),
    }
    shape = np.zeros((n, size, size), bool)
    for k, name in enumerate(SHAPES):
        sel = labels == k
        shape[sel] = masks[name][sel]
    bright = rng.uniform(150, 255, n)[:, None, None]
    noise = rng.normal(0, 12, (n, size, size))
    images = np.clip(shape * bright + noise, 0, 255).astype(np.uint8)[:, None]
    labels = labels.astype(np.int32)
    images.flags.writeable = labels.flags.writeable = False
    src = f"generated shapes (seed {seed})"
    return (ImageSet(images[:n_train], labels[:n_train], list(SHAPES), src + " train"),
            ImageSet(images[n_train:], labels[n_train:], list(SHAPES), src + " test"))

# ---------------------------------------------------------------- batches


def channel_stats(images: np.ndarray, max_images: int = 10000) -> tuple[list, list]:
    """Per-channel mean and std of pixels scaled to [0, 1] (on a prefix)."""
    x = images[:max_images].astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    return [float(v) for v in mean], [float(v) for v in std]


class Normalizer:
    """uint8 (B, ch, H, W) -> float32 (x/255 - mean) / std, through one
    256-entry table per channel."""

    def __init__(self, mean, std):
        v = np.arange(256, dtype=np.float64) / 255.0
        self.lut = np.stack([(v - m) / s for m, s in zip(mean, std)]).astype(np.float32)  # (ch, 256)

    def __call__(self, images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty(images.shape, np.float32)
        for c in range(images.shape[1]):
            np.take(self.lut[c], images[:, c], out=out[:, c])
        return out


def augment(images: np.ndarray, rng: np.random.Generator, crop_pad: int = 0,
            hflip: bool = False) -> np.ndarray:
    """uint8 (B, ch, H, W) -> a new batch: each image shifted by a random crop
    of its zero-padded copy (crop_pad pixels each side), and mirrored left to
    right with probability 1/2."""
    B, ch, H, W = images.shape
    out = images
    if crop_pad > 0:
        p = crop_pad
        padded = np.zeros((B, ch, H + 2 * p, W + 2 * p), np.uint8)
        padded[:, :, p:p + H, p:p + W] = images
        oy = rng.integers(0, 2 * p + 1, B)
        ox = rng.integers(0, 2 * p + 1, B)
        out = np.empty_like(images)
        for i in range(B):
            out[i] = padded[i, :, oy[i]:oy[i] + H, ox[i]:ox[i] + W]
    if hflip:
        flip = rng.random(B) < 0.5
        if out is images:
            out = images.copy()
        out[flip] = out[flip][..., ::-1]
    return out
