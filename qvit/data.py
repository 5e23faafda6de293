"""Data sets: Fashion-MNIST (Debian's IDX files, read here), scikit-learn digits, ImageNet-style folders.

`load_dataset(spec, split)` returns a `DataSet`: either in-memory images (`ArraySet`, augmented a
batch at a time on tensors, which keeps 28 px training fast and resumable bit for bit) or an
image folder (`FolderSet`, DeiT's timm transforms per image in DataLoader workers).

spec: "fashion-mnist" | "digits" | PATH to a folder with train/ and val/ (or test/) subfolders of
class folders (ImageNet layout).

split: "train", "val" (model selection) or "test" (reported once, never selected on). Fashion-MNIST
carves its validation split from the training set: the last VAL_SIZE of the 60k training images,
the first 55k train; "test" is the 10k t10k images. Digits has one held-out split (every 5th
image) serving as both; a folder's val/ (or validation/, test/) serves as both too.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qvit_edge.clikit import UserError

FASHION_DIR = os.environ.get("QVIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise UserError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != math.prod(shape):
        raise UserError(f"{path}: truncated IDX file")
    return arr.reshape(shape)


@dataclass
class DataSet:
    name: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    channels: int
    size: tuple[int, int]  # native image size (H, W)
    flip: bool = True  # horizontal flips are label-preserving

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
            "channels": self.channels,
        }


@dataclass
class ArraySet(DataSet):
    images: torch.Tensor = field(default=None)  # uint8 [N, C, H, W]
    labels: torch.Tensor = field(default=None)  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor, img_size: int, train: bool, aug: "Augment | None" = None):
        """Normalised float batch [B, C, img, img] and labels; augmentation uses the global torch RNG."""
        x = self.images[idx].float() / 255.0
        if train and aug is not None:
            x = aug.geometric(x, self.flip)
        if x.shape[-1] != img_size or x.shape[-2] != img_size:
            x = F.interpolate(
                x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True
            )
        x = (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)
        if train and aug is not None:
            x = aug.erase(x)
        return x, self.labels[idx]


@dataclass
class Augment:
    """DeiT-style augmentation scaled to tiny images: random translation (zero padding `pad` px, the
    small-image stand-in for RandomResizedCrop), horizontal flip, random erasing (prob re_prob,
    2-33 % of the area, normal noise, like timm's RandomErasing 'pixel' mode)."""

    pad: int = 2
    flip: bool = True
    re_prob: float = 0.25

    def geometric(self, x: torch.Tensor, flip_ok: bool) -> torch.Tensor:
        B, _, H, W = x.shape
        if self.pad:
            p = self.pad
            xp = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (B,))
            dx = torch.randint(0, 2 * p + 1, (B,))
            rows = dy.view(B, 1) + torch.arange(H).view(1, H)  # [B, H]
            cols = dx.view(B, 1) + torch.arange(W).view(1, W)  # [B, W]
            xp = xp[torch.arange(B).view(B, 1, 1), :, rows.view(B, H, 1), cols.view(B, 1, W)]  # [B, H, W, C]
            x = xp.permute(0, 3, 1, 2).contiguous()
        if self.flip and flip_ok:
            f = torch.rand(B) < 0.5
            x = torch.where(f.view(B, 1, 1, 1), x.flip(-1), x)
        return x

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        if self.re_prob <= 0:
            return x
        B, C, H, W = x.shape
        do = torch.rand(B) < self.re_prob
        area = torch.empty(B).uniform_(0.02, 1 / 3) * H * W
        log_r = torch.empty(B).uniform_(math.log(0.3), math.log(1 / 0.3))
        h = (area * log_r.exp()).sqrt().round().clamp(1, H).long()
        w = (area / log_r.exp()).sqrt().round().clamp(1, W).long()
        top = (torch.rand(B) * (H - h + 1).float()).long()
        left = (torch.rand(B) * (W - w + 1).float()).long()
        ys, xs = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
        box = (
            (ys >= top.view(B, 1, 1))
            & (ys < (top + h).view(B, 1, 1))
            & (xs >= left.view(B, 1, 1))
            & (xs < (left + w).view(B, 1, 1))
            & do.view(B, 1, 1)
        )
        noise = torch.randn_like(x)
        return torch.where(box.unsqueeze(1), noise, x)


@dataclass
class FolderSet(DataSet):
    root: str = ""
    samples: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def torch_dataset(
        self, img_size: int, train: bool, crop_pct: float = 0.875, interpolation: str = "bicubic"
    ):
        import timm.data

        tf = timm.data.create_transform(
            input_size=(self.channels, img_size, img_size),
            is_training=train,
            auto_augment="rand-m9-mstd0.5-inc1" if train else None,
            re_prob=0.25 if train else 0.0,
            re_mode="pixel",
            interpolation=interpolation,
            mean=tuple(self.mean),
            std=tuple(self.std),
            crop_pct=crop_pct,
            color_jitter=0.4 if train else None,
        )
        return _ImageList(self.samples, tf, "L" if self.channels == 1 else "RGB")


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, samples: list, transform, mode: str = "RGB"):
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert(self.mode)), label


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VAL_SIZE = 5000  # Fashion-MNIST: the last 5000 training images select models; t10k is the test set
SPLITS = ("train", "val", "test")


def _fashion(split: str) -> ArraySet:
    prefix = "t10k" if split == "test" else "train"
    d = Path(FASHION_DIR)
    img = read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
    lab = read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")
    if img.shape[0] != lab.shape[0]:
        raise UserError(f"{d}: {prefix} images and labels differ in count")
    if split != "test":
        if img.shape[0] <= VAL_SIZE:
            raise UserError(f"{d}: {img.shape[0]} training images, too few to carve out {VAL_SIZE} "
                            "for validation")
        cut = img.shape[0] - VAL_SIZE
        img, lab = (img[:cut], lab[:cut]) if split == "train" else (img[cut:], lab[cut:])
    return ArraySet(
        "fashion-mnist",
        FASHION_CLASSES,
        [0.286],
        [0.353],
        1,
        (28, 28),
        flip=True,
        images=torch.from_numpy(img.copy()).unsqueeze(1),
        labels=torch.from_numpy(lab.astype(np.int64)),
    )


def _digits(split: str) -> ArraySet:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.rint(d.images / 16.0 * 255).astype(np.uint8)
    # fixed split: every 5th image is validation (360 of 1797)
    keep = (np.arange(len(img)) % 5 == 0) if split != "train" else (np.arange(len(img)) % 5 != 0)
    return ArraySet(
        "digits",
        [str(i) for i in range(10)],
        [0.305],
        [0.376],
        1,
        (8, 8),
        flip=False,
        images=torch.from_numpy(img[keep]).unsqueeze(1),
        labels=torch.from_numpy(d.target[keep].astype(np.int64)),
    )


def _folder(root: str, split: str) -> FolderSet:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    base = Path(root)
    names = {"train": ["train"], "val": ["val", "validation", "test"],
             "test": ["test", "val", "validation"]}[split]
    sub = next((base / n for n in names if (base / n).is_dir()), None)
    if sub is None:
        raise UserError(f"{root}: no {' or '.join(n + '/' for n in names)} folder of class folders")
    # class indices always come from train/ (a class missing from val/ must not shift the others)
    cls_dir = base / "train" if (base / "train").is_dir() else sub
    classes = sorted(e.name for e in os.scandir(cls_dir) if e.is_dir())
    if not classes:
        raise UserError(f"{cls_dir}: no class folders")
    try:
        samples = make_dataset(
            str(sub), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True
        )
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{sub}: {e}") from None
    if not samples:
        raise UserError(f"{sub}: no images in the class folders")
    return FolderSet(
        f"folder:{base.name}",
        classes,
        list(IMAGENET_MEAN),
        list(IMAGENET_STD),
        3,
        (224, 224),
        root=str(sub),
        samples=samples,
    )


def has_test_split(spec: str) -> bool:
    """Whether `spec` has a test split apart from its validation split (reported, never selected on)."""
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return True
    if os.path.isdir(spec):
        return os.path.isdir(os.path.join(spec, "test")) and any(
            os.path.isdir(os.path.join(spec, n)) for n in ("val", "validation"))
    return False


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> DataSet:
    """The data set `spec`'s split; channels / mean / std as the module docstring says (one value
    of mean or std applies to every channel)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} ({', '.join(SPLITS)})")
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        ds = _fashion(split)
    elif spec == "digits":
        ds = _digits(split)
    elif os.path.isdir(spec):
        ds = _folder(spec, split)
    else:
        raise UserError(
            f"unknown data set {spec!r}: use fashion-mnist, digits, or a folder with train/ and val/"
        )
    return _with_input(ds, spec, channels, mean, std)


def _with_input(ds: DataSet, spec: str, channels, mean, std) -> DataSet:
    if channels is not None and channels != ds.channels:
        if isinstance(ds, ArraySet):
            raise UserError(
                f"{spec} has {ds.channels} channel{'s' if ds.channels > 1 else ''} (grayscale); "
                f"{channels} input channels are for image folders"
            )
        if channels not in (1, 3):
            raise UserError(f"{channels} input channels: image folders are read as 1 (grayscale) or 3 (RGB)")
        ds.channels = channels
        if channels == 1:  # ImageNet's statistics averaged, as for a 1-channel timm model
            ds.mean, ds.std = [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    for name, v in (("mean", mean), ("std", std)):
        if v is None:
            continue
        v = [float(x) for x in v]
        if len(v) == 1:
            v = v * ds.channels
        if len(v) != ds.channels:
            raise UserError(f"{len(v)} {name} values for {ds.channels} input channel(s): "
                            "give one per channel, or one")
        if not all(math.isfinite(x) for x in v) or (name == "std" and min(v) <= 0):
            raise UserError(f"{name} {v} must be finite{' and > 0' if name == 'std' else ''}")
        setattr(ds, name, v)
    return ds


def input_of(config: dict) -> dict:
    """load_dataset's channels / mean / std as a checkpoint's config stores them (its `data`)."""
    data = (config or {}).get("data") or {}
    return {k: data[k] for k in ("channels", "mean", "std") if data.get(k) is not None}


def shard_order(
    n: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True
) -> torch.Tensor:
    """This process's sample order for an epoch: a permutation fixed by (seed, epoch), padded to a
    multiple of `world` and dealt round-robin (DistributedSampler's scheme). It uses its own
    generator, so resuming mid-epoch needs only the step number."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    else:
        order = torch.arange(n)
    total = math.ceil(n / world) * world
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[rank::world]
