"""Write CIFAR-10 images as PNG files in one folder per class: an image folder to try
``latentprobe evaluate --dataset imagefolder`` on (docs/USING_YOUR_OWN.md).

    python scripts/cifar_to_folder.py --count 2000 --out cifar_png

Takes the first COUNT training images of CIFAR-10 (from --data-dir, else $LATENTPROBE_DATA).
"""

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="images to write (the first of the training set)")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (one subfolder per class)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")

    import torch
    from PIL import Image

    from latentprobe.data.cifar import load_split

    train = load_split("cifar10", "train", args.data_dir, download=False)
    train = train.subset(torch.arange(min(args.count, len(train))))
    for index, (image, label) in enumerate(zip(train.images, train.labels)):
        folder = args.out / train.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:05d}.png")
    print(f"{len(train)} images in {len(train.class_names)} class folders under {args.out}")


if __name__ == "__main__":
    main()
