"""Screen a second layer trained on the patch autoencoder's codes, against its random twin.

Issue #20 asks for a training that adds ≥ 2 points over the same pipeline with random patches at
equal size; one layer adds 0.3–1.4 on all images (docs/RESULTS.md). This asks whether a second
layer trained on the first's codes does, in the manner of Coates & Ng (NIPS 2011), on validation
(the test set is read only with ``--test``):

1. layer 1: the patch autoencoder (winner-take-all, ``K1`` filters, soft threshold, both
   polarities) trained with the latent-size study's ``train`` options (2 epochs, batch 32, Adam
   at a constant 3e-3; its own batch order), or left at its start (random whitened patches: the
   twin); its codes at every position (27×27) summed over 3×3 blocks: a 9×9 map of 2·K1 channels;
2. layer 2: every 2×2 neighbourhood of that map (8×8 positions, 8·K1 values) contrast-normalised
   and ZCA-whitened (ε = 0.1 of the mean eigenvalue, as layer 1's ε is for its contrast-normalised
   patches), read by ``K2`` unit-norm atoms: for the trained variant the winner-take-all objective
   of layer 1 (one winner by |w·x|) solved by its fixed-point iterations, from random whitened
   samples; for the twin those samples themselves; the soft threshold at the same multiple of the
   responses' spread as layer 1's 0.25, both polarities, summed over the quadrants (8·K2 values);
3. the logistic probe (standardised latents, solved by L-BFGS, L2 chosen on validation) on layer 2
   alone, on layer 1 alone (its own quadrant sums) and on the two together (``--readings``); with
   ``--test``, the package's protocol goes on (``latentprobe evaluate --refit``): the chosen probe
   refitted on training + validation reads the test set once. Without it the test set is not read.

    python scripts/screen_two_layers.py 45000 200 1600
    python scripts/screen_two_layers.py 45000 400 1600 --readings 2   # layer 2 alone
    python scripts/screen_two_layers.py 45000 200 1600 --readings 2 --test

One JSON line per reading is printed.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from latentprobe.data.cifar import Normalizer, load_split, train_val_split
from latentprobe.models import create_model
from latentprobe.models.patch_ae import pooled_codes
from latentprobe.options import EvalConfig
from latentprobe.probe.evaluate import trained_probe
from latentprobe.probe.heads import fit_heads
from latentprobe.training.engine import Objective, extract, prepare_model, train_one_epoch

# the logistic probe: its penalties tried on validation, its passes; with --test the refit and one test reading
PROTOCOL = EvalConfig(probes=["logistic"], probe_weight_decays=[1e-4, 1e-3], probe_epochs=100, refit=True)
SAMPLES = 200_000  # layer-2 inputs its whitening and atoms are fitted on


@torch.no_grad()
def layer1_map(model, images: torch.Tensor, normalizer: Normalizer, chunk: int = 100) -> torch.Tensor:
    """(N, 2·K1, 9, 9) float16: layer 1's codes summed over 3×3 blocks of positions."""
    maps = torch.empty(len(images), 2 * model.num_filters, 9, 9, dtype=torch.float16)
    for start in range(0, len(images), chunk):
        maps[start:start + chunk] = F.avg_pool2d(model.feature_map(normalizer(images[start:start + chunk])), 3) * 9
    return maps


def neighbourhoods(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, 9, 9) → (N, 64, 4·C): each 2×2 neighbourhood of the map as one vector."""
    return F.unfold(maps.float(), 2).transpose(1, 2)


def neighbourhood_at(maps: torch.Tensor, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The 2×2 neighbourhood at one position (0 … 63) of each image's map, as ``neighbourhoods``
    orders it (channel, then row, then column): (n, 4·C), without unfolding the other 63."""
    rows, columns = positions // 8, positions % 8
    corners = [maps[images, :, rows + dy, columns + dx] for dy in (0, 1) for dx in (0, 1)]  # (n, C) each
    return torch.stack(corners, -1).flatten(1).float()


def contrast(vectors: torch.Tensor, eps: float) -> torch.Tensor:
    centred = vectors - vectors.mean(-1, keepdim=True)
    return centred / (centred.var(-1, keepdim=True) + eps).sqrt()


class Layer2:
    """Whitening and atoms fitted on ``SAMPLES`` neighbourhoods of the training maps."""

    def __init__(self, maps: torch.Tensor, atoms: int, iterations: int, spread_ratio: float, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(len(maps), (SAMPLES,), generator=generator)
        positions = torch.randint(64, (SAMPLES,), generator=generator)
        samples = torch.cat([neighbourhood_at(maps, images[i:i + 10_000], positions[i:i + 10_000])
                             for i in range(0, SAMPLES, 10_000)])
        self.eps = 0.01 * float(samples.var(-1).mean())
        samples = contrast(samples, self.eps)
        self.mean = samples.mean(0)
        values, vectors = torch.linalg.eigh(torch.cov((samples - self.mean).T))
        self.zca = vectors @ torch.diag((values.clamp(min=0) + 0.1 * values.clamp(min=0).mean()).rsqrt()) @ vectors.T
        whitened = (samples - self.mean) @ self.zca
        start = torch.randperm(SAMPLES, generator=generator)[:atoms]
        self.atoms = F.normalize(whitened[start], dim=-1)
        for _ in range(iterations):  # one winner by |w·x|: each atom to its points' signed mean
            responses = torch.cat([part @ self.atoms.T for part in whitened.split(8192)])
            winner = responses.abs().argmax(-1)
            sign = responses.gather(1, winner.unsqueeze(1)).sign()
            sums = torch.zeros_like(self.atoms).index_add_(0, winner, whitened * sign)
            self.atoms = torch.where(sums.norm(dim=-1, keepdim=True) > 0, F.normalize(sums, dim=-1), self.atoms)
        spread = float(torch.cat([part @ self.atoms.T for part in whitened[:20_000].split(8192)]).std())
        self.threshold = spread_ratio * spread

    @torch.no_grad()
    def encode(self, maps: torch.Tensor, chunk: int = 500) -> torch.Tensor:
        """(N, C, 9, 9) → (N, 8·K2): both polarities past the threshold, summed over the quadrants
        of the 8×8 map of neighbourhoods."""
        out, read = [], self.zca @ self.atoms.T  # whitening and atoms in one product
        for part in maps.split(chunk):
            responses = ((contrast(neighbourhoods(part), self.eps) - self.mean) @ read).view(len(part), 8, 8, -1)
            out.append(pooled_codes(responses, "soft_threshold", None, self.threshold))
        return torch.cat(out)


def probe(name: str, train, val, test, started: float) -> None:
    """Each split a (features, labels) pair; ``test`` None: validation only."""
    if test is None:
        settings = [(None, l2) for l2 in PROTOCOL.probe_weight_decays]  # solved: no learning rate
        fits = fit_heads("logistic", train, val, 10, settings=settings, epochs=PROTOCOL.probe_epochs, patience=None)
        best, (_, l2) = max(zip(fits, settings), key=lambda item: item[0].val_acc)
        reading = {"val_acc": best.val_acc, "weight_decay": l2, "passes": best.best_epoch}
    else:
        record, _ = trained_probe("logistic", train, val, test, 10, PROTOCOL, torch.device("cpu"))
        reading = {"val_acc": record["chosen"]["val_acc"], "weight_decay": record["chosen"]["weight_decay"],
                   "passes": record["chosen"]["best_epoch"], "test_acc": record["test"]["mean"],
                   "refit_passes": record["seeds"][0]["best_epoch"]}
    print(json.dumps({"reading": name, "latent_dim": train[0].shape[1], **reading,
                      "seconds": round(time.perf_counter() - started)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=int, help="training images (the first of the seed-0 split)")
    parser.add_argument("filters", type=int, help="layer 1's dictionary size K1")
    parser.add_argument("atoms", type=int, help="layer 2's dictionary size K2")
    parser.add_argument("--iterations", type=int, default=10, help="layer 2's fixed-point iterations")
    parser.add_argument("--variants", default="trained,random")
    parser.add_argument("--readings", default="2,1,1+2",
                        help="what the probe reads: layer 2 alone, layer 1 alone, the two together")
    parser.add_argument("--whitening-patches", type=int, default=400_000)
    parser.add_argument("--test", action="store_true",
                        help="refit the chosen probe on training + validation and read the test set once")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    readings = args.readings.split(",")
    if not set(readings) <= {"2", "1", "1+2"}:
        parser.error(f"--readings takes 2, 1 and 1+2, got {args.readings}")
    everything = load_split("cifar10", "train", args.data_dir, download=False)
    train, val = train_val_split(everything, min(5000, len(everything) // 4), seed=0)  # the runs' split of seed 0
    train = train.subset(torch.arange(min(args.images, len(train))))
    splits = [train, val] + ([load_split("cifar10", "test", args.data_dir, download=False)] if args.test else [])
    normalizer = Normalizer("cifar10")
    for variant in args.variants.split(","):
        started = time.perf_counter()
        torch.manual_seed(0)
        model = create_model("patch_ae", latent_dim=8 * args.filters, whitening_patches=args.whitening_patches,
                             activation="winner_take_all", encoding="soft_threshold")
        prepare_model(model, train.images, normalizer, seed=0)
        if variant == "trained":  # the one training epoch of the package: 2 epochs, batch 32, Adam at 3e-3
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            for epoch in range(2):
                train_one_epoch(Objective(model), optimizer, train.images, normalizer, batch_size=32,
                                generator=torch.Generator().manual_seed(epoch), lr_fn=lambda step: 3e-3,
                                first_step=0)  # a constant lr: the step count reads nothing
        model.eval()
        with torch.no_grad():  # layer 1's threshold against the spread of its responses
            patches = model._whiten(model.whitening_sample(normalizer(train.images[:2000]),
                                                           torch.Generator().manual_seed(0)).float())
            ratio = model.threshold / float((patches[:20_000] @ model._filters().T).std())
        maps = [layer1_map(model, split.images, normalizer) for split in splits]
        print(json.dumps({"variant": variant, "stage": "layer 1", "seconds": round(time.perf_counter() - started),
                          "threshold_ratio": ratio}), flush=True)
        second = Layer2(maps[0], args.atoms, args.iterations if variant == "trained" else 0, ratio)
        layer2 = [second.encode(split_maps) for split_maps in maps]
        del maps, second  # the probes' memory

        def read(name: str, features: list[torch.Tensor]) -> None:
            pairs = [(x, split.labels) for x, split in zip(features, splits)] + [None]  # no test: None
            probe(f"{variant}: {name}", pairs[0], pairs[1], pairs[2], started)

        if "2" in readings:
            read("layer 2", layer2)
        if "1" in readings or "1+2" in readings:
            layer1 = [extract(model.encode, split.images, normalizer) for split in splits]  # its own quadrants
            if "1" in readings:
                read("layer 1", layer1)
            if "1+2" in readings:
                read("layers 1 and 2", [torch.cat(pair, 1) for pair in zip(layer1, layer2)])
            del layer1
        del layer2  # the next variant's memory


if __name__ == "__main__":
    main()
