"""Screen conv-autoencoder settings by *validation* linear-probe accuracy, epoch by epoch.

    python scripts/screen_conv_ae.py NAME --c1 16 --c2 32 --noise 1.0 [--epochs 10] [--out runs/screen]

Trains the study's autoencoder (latent 256 by default; MSE, Adam lr 1e-3, batch 128, gradient
norm clipped to 1.0) on the 45,000 training images and, after epochs 1, 2, 4, 6, 8 and 10,
fits a logistic regression (scikit-learn, standardised latents, C=0.01) on the training latents
and scores it on the 5,000 validation images. The test set is never read: this is how settings
are chosen before one `latentprobe train` + `latentprobe probe` run reports a test number.
One JSON line per epoch goes to OUT/NAME.jsonl.
"""

import argparse
import json
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from latentprobe.data.cifar import Normalizer, load_split, train_val_split
from latentprobe.models import create_model
from latentprobe.training.engine import Objective, extract, train_one_epoch

PROBE_EPOCHS = {1, 2, 4, 6, 8, 10, 15, 20}


def val_probe_accuracy(model, train, val, normalizer) -> float:
    model.eval()
    with torch.no_grad():
        x_train, x_val = (extract(model.encode, split.images, normalizer).numpy() for split in (train, val))
    model.train()
    scaler = StandardScaler().fit(x_train)
    classifier = LogisticRegression(C=0.01, max_iter=200).fit(scaler.transform(x_train), train.labels.numpy())
    return classifier.score(scaler.transform(x_val), val.labels.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--latent-dim", type=int, default=256)
    parser.add_argument("--c1", type=int, default=16)
    parser.add_argument("--c2", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.0, help="denoising: input noise std (0: plain AE)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--val-size", type=int, default=5000, help="validation images carved from the training set")
    parser.add_argument("--out", default="runs/screen")
    args = parser.parse_args()

    torch.manual_seed(0)
    train, val = train_val_split(load_split("cifar10", "train", args.data_dir, download=False), args.val_size, seed=0)
    normalizer = Normalizer("cifar10")
    model = create_model("conv_ae", latent_dim=args.latent_dim, c1=args.c1, c2=args.c2, noise=args.noise)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    out = Path(args.out) / f"{args.name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as log:
        for epoch in range(1, args.epochs + 1):
            stats = train_one_epoch(Objective(model), optimizer, train.images, normalizer, batch_size=args.batch_size,
                                    generator=generator, lr_fn=lambda step: 1e-3, first_step=0, clip_grad=1.0)
            record = {"epoch": epoch, "loss": stats["train_loss"], "sec": stats["epoch_seconds"]}
            if epoch in PROBE_EPOCHS:
                record["val_probe"] = val_probe_accuracy(model, train, val, normalizer)
            print(json.dumps(record), file=log, flush=True)
            print(args.name, record, flush=True)


if __name__ == "__main__":
    main()
