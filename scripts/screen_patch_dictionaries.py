"""Screen patch dictionaries and encodings for models/patch_ae.py on a real CIFAR-10 subset.

Validation only (the test set is never read): the first N training images of the seed-0 split,
2,000 validation images, the logistic probe (standardised latents, trained to convergence). Each
variant is a patch_ae model built from ``model_args``, fitted as ``train`` fits one before its
first step (whitening; k-means centroids as the 2011 code fits them), trained ``epochs`` passes of
its own loss when asked, and read by its own dense encoding and quadrant pooling:

    python scripts/screen_patch_dictionaries.py 10000 1600 kmeans_triangle random_soft wta_soft:2

Variants (name[:epochs]): ``kmeans_triangle`` (the 2011 reference), ``kmeans_soft`` (k-means
centroids, soft threshold, both polarities), ``random_soft`` (random whitened patches), ``wta_soft``
(the winner-take-all autoencoder). One JSON line per variant is printed.

Two variants are the pipeline as it was before issue #20's fixes, for its ablation table:
``wta_soft_standardised`` normalises each patch's contrast on the data layer's standardised values
(per-channel mean 0, std 1, the contrast_eps of then: 0.0025) instead of on pixel values;
``kmeans_triangle_before`` starts the centroids on whitened data patches and runs 10 Lloyd
iterations instead of the released code's ``randn · 0.1`` and 50 (its empty centroids are zeroed,
as now: the restart of then is not reproduced).
"""

import argparse
import json
import time

import torch

from latentprobe.data.cifar import Normalizer, load_split, train_val_split
from latentprobe.models import create_model
from latentprobe.models.patch_ae import lloyd_step
from latentprobe.probe.heads import fit_heads
from latentprobe.training.engine import extract, keep_freed_memory, prepare_model

SETTINGS = [(1e-3, 0.0), (1e-3, 1e-4)]  # the logistic probe's (lr, L2) tried on validation

VARIANTS = {
    "kmeans_triangle": dict(encoding="triangle", kmeans_iterations=50),
    "kmeans_soft": dict(encoding="soft_threshold", kmeans_iterations=50),
    "random_soft": dict(activation="winner_take_all", encoding="soft_threshold"),
    "wta_soft": dict(activation="winner_take_all", encoding="soft_threshold"),
    "wta_soft_standardised": dict(activation="winner_take_all", encoding="soft_threshold", contrast_eps=0.0025),
    "kmeans_triangle_before": dict(activation="winner_take_all", encoding="triangle"),
}
STANDARDISED = {"wta_soft_standardised"}  # contrast normalised on the standardised values, as before #20
BEFORE_ITERATIONS = {"kmeans_triangle_before": 10}  # Lloyd iterations from data patches, as before #20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=int, help="training images (the first of the seed-0 split)")
    parser.add_argument("filters", type=int, help="dictionary size K")
    parser.add_argument("variants", nargs="+", help=f"name[:epochs], names: {', '.join(VARIANTS)}")
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--whitening-patches", type=int, default=400_000)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    keep_freed_memory()
    everything = load_split("cifar10", "train", args.data_dir, download=False)
    train, val = train_val_split(everything, min(5000, len(everything) // 4), seed=0)  # the runs' split of seed 0
    train, val = train.subset(torch.arange(min(args.images, len(train)))), val.subset(
        torch.arange(min(args.val_images, len(val))))
    normalizer = Normalizer("cifar10")
    for variant in args.variants:
        name, _, epochs = variant.partition(":")
        options = VARIANTS[name]
        per_filter = 8 if options["encoding"] == "soft_threshold" else 4
        torch.manual_seed(0)
        model = create_model("patch_ae", latent_dim=per_filter * args.filters,
                             whitening_patches=args.whitening_patches, **options)
        started = time.perf_counter()
        if name in STANDARDISED:  # no pixel statistics: the standardised values are what it normalises
            model.prepare(normalizer(train.images), generator=torch.Generator().manual_seed(0))
        else:
            prepare_model(model, train.images, normalizer, seed=0)
        if name in BEFORE_ITERATIONS:  # filters on data patches (the winner-take-all start), then Lloyd
            with torch.no_grad():
                sample = model.whitening_sample(normalizer(train.images), torch.Generator().manual_seed(0))
                sample = model._whiten(sample.float())
                centroids = model.weight.detach().clone()
                for _ in range(BEFORE_ITERATIONS[name]):
                    centroids = lloyd_step(sample, centroids)
                model.weight.copy_(centroids)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(int(epochs or 0)):  # the autoencoder's own loss on random patches, batch 32
            model.train()
            for index in torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(32):
                loss, _ = model.loss(normalizer(train.images[index]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        fits = fit_heads("logistic", (extract(model.encode, train.images, normalizer), train.labels),
                         (extract(model.encode, val.images, normalizer), val.labels), 10, settings=SETTINGS,
                         epochs=args.probe_epochs, patience=None, schedule="cosine")
        best, (lr, l2) = max(zip(fits, SETTINGS), key=lambda item: item[0].val_acc)
        print(json.dumps({"variant": variant, "latent_dim": model.latent_dim, "val_acc": best.val_acc, "lr": lr,
                          "weight_decay": l2, "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
