"""Labelled images of your own: a folder of class folders, or an .npz of arrays.

Both give the same ``Split`` as the CIFAR reader (uint8 (N, C, H, W) tensors, labels, class
names). The files of a folder are read square at the encoder's input size S: each image's shorter
side is resized to S, then its centre is cropped (an image already S × S is taken as it is, pixel
for pixel); arrays keep their size, and the encoder fits each batch to S the same way. Nothing is
unpickled: images are decoded by Pillow under a pixel limit, arrays are read with
``allow_pickle=False``.
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from latentprobe.data.cifar import Split
from latentprobe.data.download import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
MAX_PIXELS = 50_000_000  # a larger image is refused as a decompression bomb (Pillow warns at 89 M)
TEST_FRACTION = 0.2  # a folder without train/ and test/ gives this share of each class to the test split


def _square(image, size: int) -> np.ndarray:
    """A PIL RGB image as uint8 (3, size, size): shorter side resized to ``size``, centre crop."""
    from PIL import Image

    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _eight_bit(image):
    """16-bit (modes I;16*, I) and float (mode F) greyscale images scaled to 8 bits by their value
    range: ``convert("RGB")`` would clip them instead, and a 16-bit PNG would turn white."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0  # float pixels: 0..1; integer ones: 16 bits
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
        raise ValueError(f"{image.mode} pixels {values.min():g}..{values.max():g} are outside 0..{top:g}; "
                         f"save the image with 8 bits per channel")
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8))  # mode L


def read_image(path: Path, size: int) -> np.ndarray:
    """One image file of any size and mode as uint8 (3, size, size): the stored rotation applied,
    16-bit and float greyscale scaled, transparency on white, shorter side resized, centre cropped.
    Any failure is a ValueError with a one-line reason: not a file (a folder, a FIFO, a device),
    not an image, more than ``MAX_PIXELS`` pixels (a decompression bomb), truncated."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ValueError("a link that leads nowhere (a loop, or a missing target)" if path.is_symlink() else "no such file")
    if not path.is_file():
        raise ValueError("a folder, not an image file" if path.is_dir() else "not a regular file (a pipe or device)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(path) as image:
                image.draft("RGB", (4 * size, 4 * size))  # JPEG: big photos decoded at a reduced size
                image = ImageOps.exif_transpose(image)  # phone photos: the stored rotation
                image = _eight_bit(image)
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    # transparent pixels would otherwise turn into whatever colour they store: white
                    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, image.convert("RGBA"))
                return _square(image.convert("RGB"), size)
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            reason = f"more than {MAX_PIXELS:,} pixels" if "ecompression" in type(err).__name__ else type(err).__name__
            raise ValueError(f"not a readable image ({reason})") from None
        except OSError as err:
            raise ValueError(f"cannot read the image ({err})") from None
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - a decoder's failure on a corrupt file, whatever its type
            raise ValueError(f"not a readable image ({type(err).__name__})") from None


def _class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {f.name: sorted(p for p in f.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
             for f in folders}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no image ({', '.join(IMAGE_SUFFIXES)}); "
                        f"add images or remove the folders")
    if len(files) < 2:
        raise DataError(f"{root}: {len(files)} class folder(s); an image folder needs one subfolder per class, "
                        f"at least two")
    return files


def _read_files(files: dict[str, list[Path]], class_names: list[str], size: int, skipped: list[str]):
    images, labels = [], []
    for label, name in enumerate(class_names):
        for path in files.get(name, []):
            try:
                images.append(read_image(path, size))
                labels.append(label)
            except ValueError as error:  # undecodable: skipped and listed
                skipped.append(f"{path}: {error}")
    return images, labels


def _split(images: list, labels: list, class_names: list[str], dataset: str) -> Split:
    array = np.stack(images) if images else np.zeros((0, 3, 1, 1), np.uint8)
    return Split(torch.from_numpy(array), torch.tensor(labels, dtype=torch.int64), class_names, dataset)


def load_image_folder(root: Path | str, size: int, seed: int = 0) -> tuple[Split, Split, list[str]]:
    """(train, test, skipped files) of ``root``: ``root/train/<class>/…`` and ``root/test/<class>/…``
    when both exist, else ``root/<class>/…`` split per class with ``seed`` (a fifth to test)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; --data-dir names a folder with one subfolder per class")
    skipped: list[str] = []
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, test_files = _class_folders(root / "train"), _class_folders(root / "test")
        unknown = sorted(set(test_files) - set(train_files))
        if unknown:
            raise DataError(f"{root / 'test'}: classes {', '.join(unknown)} have no training folder in "
                            f"{root / 'train'}")
    else:
        files = _class_folders(root)
        generator = torch.Generator().manual_seed(seed)
        train_files, test_files = {}, {}
        for name, paths in files.items():
            order = torch.randperm(len(paths), generator=generator).tolist()
            cut = round(len(paths) * TEST_FRACTION)
            test_files[name], train_files[name] = [paths[i] for i in order[:cut]], [paths[i] for i in order[cut:]]
    class_names = sorted(train_files)
    train = _split(*_read_files(train_files, class_names, size, skipped), class_names, "imagefolder")
    test = _split(*_read_files(test_files, class_names, size, skipped), class_names, "imagefolder")
    for split, name in ((train, "training"), (test, "test")):
        if len(split) == 0:
            why = f"{len(skipped)} files could not be read, e.g. {skipped[0]}" if skipped else \
                f"a fifth of each class goes to test: give each class at least {round(1 / TEST_FRACTION)} images, " \
                f"or train/ and test/ folders"
            raise DataError(f"{root}: no readable {name} image ({why})")
    return train, test, skipped


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(array: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[3]):
        raise DataError(f"{path}: {key} has shape {array.shape}; give images as (N, H, W, 3) or (N, 3, H, W)")
    if array.dtype != np.uint8:
        raise DataError(f"{path}: {key} is {array.dtype}; give images as uint8 pixel values 0-255")
    return torch.from_numpy(np.ascontiguousarray(array if array.shape[1] == 3 else array.transpose(0, 3, 1, 2)))


def load_npz(path: Path | str) -> tuple[Split, Split, list[str]]:
    """(train, test, no skipped files) from an .npz of ``x_train``, ``y_train``, ``x_test``,
    ``y_test`` (uint8 images, labels 0 … C-1) and optional ``class_names``; the images keep their
    size (the encoder resizes each batch to its input)."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file" if not path.exists() else "not a plain file"
        raise DataError(f"{path}: {what}; --data-dir names the .npz (arrays {', '.join(NPZ_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # noqa: BLE001 - not an npz, or one that needs pickle
        raise DataError(f"{path}: not a readable .npz without pickle ({error}); save it with numpy.savez") from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}; an npz data set holds {', '.join(NPZ_KEYS)}")
    splits = []
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: x_{part} holds {len(x)} images but y_{part} has shape {y.shape}; "
                            f"give one integer label per image")
        if not len(y):
            raise DataError(f"{path}: x_{part} holds no image; give at least one per class")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DataError(f"{path}: y_{part} must hold integer labels 0 … C-1")
        splits.append((_npz_images(x, path, f"x_{part}"), torch.from_numpy(y.astype(np.int64))))
    (_, train), (_, test) = splits
    unseen = sorted(set(test.unique().tolist()) - set(train.unique().tolist()))
    if unseen:
        raise DataError(f"{path}: y_test holds classes no training image has ({unseen[:5]}); a probe can only "
                        f"predict the classes it was trained on")
    count = int(train.max()) + 1
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else [str(i) for i in range(count)]
    if len(names) < count or count < 2:
        raise DataError(f"{path}: labels run to {count - 1} but {len(names)} class names are given"
                        if len(names) < count else f"{path}: one class only; a probe needs two or more")
    if len(set(names)) < len(names):
        raise DataError(f"{path}: class_names must be distinct, got {names[:10]}")
    return (*(Split(x, y, names, "npz") for x, y in splits), [])


def data_digest(dataset: str, root: Path | str) -> str:
    """What identifies the images of an image folder (every file's path, size and time) or an
    npz (its bytes): cached features of other images are never reused."""
    root = Path(root).expanduser()
    digest = hashlib.sha256()
    if dataset == "npz":
        with open(root, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
