"""A single-layer autoencoder on whitened image patches, applied convolutionally.

The pipeline of Coates, Lee & Ng (AISTATS 2011), with a trained autoencoder as its dictionary:

1. every p×p patch is brightness/contrast normalised (its own mean subtracted, divided by its
   own standard deviation) and ZCA-whitened with statistics fitted once on random patches of the
   training split (``prepare``);
2. the autoencoder reads one whitened patch x (D = 3·p·p values) with K unit-norm filters W (K, D)
   and a tied decoder ``Wᵀ h``; the loss is the squared error on the whitened patch. Its code h,
   by ``activation``:
   - ``relu``: ``h = relu(W x - b)``, plus ``sparsity · mean(h)`` in the loss to keep most units
     silent;
   - ``winner_take_all``: only the ``winners`` largest responses ``|W x|`` of each patch are kept
     (with their sign), the rest set to 0 (a k-sparse autoencoder; with one winner each filter
     learns a cluster of patches, as k-means does);
3. the latent of an image is an encoding at every position (stride 1), sum-pooled over the four
   quadrants of the map. ``encoding``: ``relu`` (the training code without its top-k, K values per
   position, ``latent_dim = 4K``) or ``soft_threshold``, both polarities of the response past a
   fixed threshold α: ``relu(W x - α)`` and ``relu(-W x - α)`` (2K values, ``latent_dim = 8K``),
   the encoding that reads a patch dictionary best in Coates & Ng (ICML 2011); or ``triangle``,
   the 2011 paper's k-means encoding, ``relu(mean(z) - z_k)`` with ``z_k`` the distance of the
   whitened patch to filter k as stored (K values per position, ``latent_dim = 4K``).

The reference point, k-means with the triangle encoding, shares this pipeline:
``kmeans_iterations=N`` makes ``prepare`` replace the starting filters by the centroids of N
Lloyd iterations over the whitening sample. It is a dictionary fitted, not an autoencoder
trained: ``evaluate --baselines kmeans`` builds it from a run's own options and whitening.

Whitening statistics are buffers, so they travel in the checkpoint with the filters and
``encode`` gives the same latent wherever the checkpoint is loaded.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.models import register_model

QUADRANTS = 4
ACTIVATIONS = ("relu", "winner_take_all")
ENCODINGS = ("relu", "soft_threshold", "triangle")


class PatchAutoencoder(nn.Module):
    # images at a time wherever every position is read: the map holds K × 27 × 27 codes per image
    CHUNK = 50

    def __init__(self, *, latent_dim: int = 6400, patch_size: int = 6, img_size: int = 32, in_chans: int = 3,
                 sparsity: float = 0.1, threshold: float = 0.25, contrast_eps: float = 0.0025,
                 zca_eps: float = 0.1, whitening_patches: int = 400_000, patches_per_image: int = 32,
                 activation: str = "relu", winners: int = 1, encoding: str = "relu", kmeans_iterations: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS or encoding not in ENCODINGS:
            raise ValueError(f"unknown activation {activation!r} or encoding {encoding!r}; activation: "
                             f"{', '.join(ACTIVATIONS)}; encoding: {', '.join(ENCODINGS)}")
        per_filter = QUADRANTS * (2 if encoding == "soft_threshold" else 1)
        if latent_dim < per_filter or latent_dim % per_filter:
            raise ValueError(f"latent_dim is {per_filter} × the number of filters (one sum per image quadrant"
                             f"{' and polarity' if per_filter == 8 else ''}); got {latent_dim}, use a positive "
                             f"multiple of {per_filter} such as {per_filter * 1600} (1,600 filters)")
        if not 1 <= winners <= latent_dim // per_filter:
            raise ValueError(f"winners {winners} must be 1 … the number of filters ({latent_dim // per_filter})")
        if kmeans_iterations < 0:
            raise ValueError(f"kmeans_iterations must be 0 (no k-means) or more, got {kmeans_iterations}")
        if not 1 <= patch_size <= img_size // 2:
            raise ValueError(f"patch_size {patch_size} does not fit a {img_size}x{img_size} image split in "
                             f"quadrants; use 1 … {img_size // 2} (6 is the reference)")
        self.config = dict(latent_dim=latent_dim, patch_size=patch_size, img_size=img_size, in_chans=in_chans,
                           sparsity=sparsity, threshold=threshold, contrast_eps=contrast_eps, zca_eps=zca_eps,
                           whitening_patches=whitening_patches, patches_per_image=patches_per_image,
                           activation=activation, winners=winners, encoding=encoding,
                           kmeans_iterations=kmeans_iterations)
        self.latent_dim, self.num_filters = latent_dim, latent_dim // per_filter
        self.activation, self.winners, self.encoding, self.threshold = activation, winners, encoding, threshold
        self.kmeans_iterations = kmeans_iterations
        self.patch_size, self.img_size, self.in_chans = patch_size, img_size, in_chans
        self.sparsity, self.contrast_eps, self.zca_eps = sparsity, contrast_eps, zca_eps
        self.whitening_patches, self.patches_per_image = whitening_patches, patches_per_image
        patch_dim = in_chans * patch_size * patch_size
        self.weight = nn.Parameter(torch.randn(self.num_filters, patch_dim) / patch_dim**0.5)  # (K, D)
        self.bias = nn.Parameter(torch.full((self.num_filters,), float(threshold)))
        # ZCA: whitened = (patch - zca_mean) @ zca_matrix; identity until ``prepare`` fits them.
        self.register_buffer("zca_mean", torch.zeros(patch_dim))
        self.register_buffer("zca_matrix", torch.eye(patch_dim))

    # ---- patches

    def _normalised_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → patches at every position, each minus its mean and over its contrast,
        (B, L, D) with L = (S-p+1)²; and those means and contrasts, (B, L, 1) each."""
        if images.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"expected images of shape ({self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(images.shape[1:])}")
        patches = F.unfold(images.float(), self.patch_size).transpose(1, 2)
        mean = patches.mean(dim=-1, keepdim=True)
        scale = ((patches - mean).pow(2).mean(dim=-1, keepdim=True) + self.contrast_eps).sqrt()
        return (patches - mean) / scale, mean, scale

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        return self._normalised_patches(images)[0]

    def _whiten(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches - self.zca_mean) @ self.zca_matrix

    def _filters(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1)  # (K, D), unit norm: the threshold has one scale

    @torch.no_grad()
    def prepare(self, images: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Fit the ZCA whitening on ``whitening_patches`` random patches of ``images`` (the
        training split, normalised): eigenvectors U and eigenvalues S of their covariance give
        ``U diag(1/sqrt(S + zca_eps)) Uᵀ``. A winner-take-all autoencoder also starts each filter
        on one of these patches, whitened (so its untrained baseline is a dictionary of random
        patches, itself a strong one: Coates & Ng 2011); ``kmeans_iterations`` then moves them to
        the k-means centroids of the whitened sample."""
        patch_dim = self.zca_matrix.shape[0]
        per_image = max(1, -(-self.whitening_patches // len(images)))
        samples = torch.cat([self._sample(images[i:i + 500], per_image, generator)
                             for i in range(0, len(images), 500)])[:self.whitening_patches].double()
        if len(samples) < 2 * patch_dim:
            raise ValueError(f"whitening {patch_dim}-value patches needs at least {2 * patch_dim} patches, "
                             f"got {len(samples)}; use more training images or a larger whitening_patches")
        mean = samples.mean(dim=0)
        covariance = (samples - mean).T @ (samples - mean) / (len(samples) - 1)
        values, vectors = torch.linalg.eigh(covariance)
        matrix = vectors @ torch.diag((values.clamp(min=0) + self.zca_eps).rsqrt()) @ vectors.T
        self.zca_mean.copy_(mean.float())
        self.zca_matrix.copy_(matrix.float())
        if self.activation == "winner_take_all" or self.kmeans_iterations:  # filters start on patches: none dead
            picked = torch.randint(0, len(samples), (self.num_filters,), generator=generator).to(samples.device)
            centroids = self._whiten(samples[picked].float())
            if self.kmeans_iterations:
                whitened = self._whiten(samples.float())
                for _ in range(self.kmeans_iterations):
                    centroids = _lloyd_step(whitened, centroids, generator)
            self.weight.copy_(centroids.to(self.weight.device))

    def _sample(self, images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` random patches of each image, contrast-normalised, (B·count, D)."""
        patches = self._patches(images)  # (B, L, D)
        index = torch.randint(0, patches.shape[1], (len(images), count), generator=generator)
        index = index.to(images.device)
        return patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1])).flatten(0, 1)

    # ---- the autoencoder on one patch

    def encode_patches(self, whitened: torch.Tensor) -> torch.Tensor:
        """(N, D) whitened patches → (N, K) sparse codes: the autoencoder's own ``activation``."""
        responses = whitened @ self._filters().T
        if self.activation == "relu":
            return F.relu(responses - self.bias)
        kept = responses.abs().topk(self.winners, dim=-1).indices  # winner-take-all, per patch
        return torch.zeros_like(responses).scatter(-1, kept, responses.gather(-1, kept))

    def latent_codes(self, whitened: torch.Tensor) -> torch.Tensor:
        """(N, D) whitened patches → the codes the latent pools, by ``encoding``: (N, K) or (N, 2K)."""
        return torch.cat(self._code_parts(whitened), dim=-1)

    def _code_parts(self, whitened: torch.Tensor) -> list[torch.Tensor]:
        """The codes of ``latent_codes`` as parts of K columns each (pooled part by part, so the
        (…, 2K) map of both polarities is never written out whole)."""
        if self.encoding == "triangle":
            distances = _distances(whitened, self.weight)  # (…, K), to the filters as stored
            return [F.relu(distances.mean(dim=-1, keepdim=True) - distances)]
        responses = whitened @ self._filters().T
        if self.encoding == "relu":
            return [F.relu(responses - self.bias)]
        return [F.relu(responses - self.threshold), F.relu(-responses - self.threshold)]

    def decode_patches(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self._filters()  # tied weights: (N, K) → (N, D)

    def _patch_loss(self, whitened: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encode_patches(whitened)
        decoded = self.decode_patches(codes)
        penalty = self.sparsity * codes.mean() if self.activation == "relu" else 0.0  # top-k is sparse by itself
        return (decoded - whitened).pow(2).sum(dim=-1).mean() + penalty, decoded

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error on whitened patches + sparsity · mean code. Training reads
        ``patches_per_image`` random positions per image (and returns the input as its
        "reconstruction"); evaluation reads every position and puts the image back together."""
        if self.training:
            return self._patch_loss(self._whiten(self._sample(images, self.patches_per_image)))[0], images
        losses, images_back = zip(*(self._whole_image_loss(part) for part in images.split(self.CHUNK)))
        sizes = torch.tensor([len(part) for part in images_back], device=images.device)
        return (torch.stack(losses) * sizes).sum() / len(images), torch.cat(images_back)

    def _whole_image_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, mean, scale = self._normalised_patches(images)
        loss, decoded = self._patch_loss(self._whiten(patches))
        return loss, self._image(decoded, mean, scale)

    def _image(self, decoded: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Decoded whitened patches (B, L, D) un-whitened, given back their own mean and contrast,
        and the overlapping patches averaged into images (B, C, S, S)."""
        patches = (decoded @ torch.linalg.pinv(self.zca_matrix) + self.zca_mean) * scale + mean
        size = (self.img_size, self.img_size)
        summed = F.fold(patches.transpose(1, 2), size, self.patch_size)
        counts = F.fold(torch.ones_like(patches).transpose(1, 2), size, self.patch_size)
        return summed / counts

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict:
        return {"reconstruction": torch.cat([self._whole_image_loss(part)[1] for part in images.split(self.CHUNK)])}

    # ---- the latent of an image

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Latent codes at every position: (B, K or 2K, S-p+1, S-p+1)."""
        side = self.img_size - self.patch_size + 1
        codes = self.latent_codes(self._whiten(self._patches(images)))  # (B, L, K or 2K)
        return codes.transpose(1, 2).reshape(len(images), codes.shape[-1], side, side)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The dense encoding, (B, K, S-p+1, S-p+1): what ``encode`` pools."""
        return self.feature_map(images)

    def encode(self, images: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
        """(B, latent_dim): each code summed over the four quadrants of the map (the middle row and
        column, when the map's side is odd, go to the first half), code-major: code k's sums over
        the top-left, top-right, bottom-left and bottom-right quadrants are values 4k … 4k+3.
        ``chunk`` images at a time, since the map holds K × 27 × 27 values per image."""
        side = self.img_size - self.patch_size + 1
        half = (side + 1) // 2
        pooled = []
        for part in images.split(chunk):
            whitened = self._whiten(self._patches(part))  # (b, L, D), positions row by row
            quadrant_sums = []
            for codes in self._code_parts(whitened):
                grid = codes.view(len(part), side, side, -1)  # (b, rows, cols, K): no copy
                rows = torch.stack([grid[:, :half].sum(1), grid[:, half:].sum(1)], dim=1)  # (b, 2, cols, K)
                quadrants = torch.stack([rows[:, :, :half].sum(2), rows[:, :, half:].sum(2)], dim=2)  # (b, 2, 2, K)
                quadrant_sums.append(quadrants.flatten(1, 2))  # (b, 4, K)
            pooled.append(torch.cat(quadrant_sums, dim=-1).transpose(1, 2).flatten(1))  # (b, K·4), code-major
        return torch.cat(pooled)


def _distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (…, K) of points (…, D) to centroids (K, D), by one matrix product."""
    squared = points.pow(2).sum(-1, keepdim=True) - 2 * points @ centroids.T + centroids.pow(2).sum(-1)
    return squared.clamp(min=0).sqrt()


def _lloyd_step(points: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator | None,
                chunk: int = 20_000) -> torch.Tensor:
    """One k-means iteration over points (N, D): each point to its nearest centroid (in chunks: N × K
    distances would not fit), each centroid to the mean of its points; an empty one restarts on a
    random point."""
    nearest = torch.cat([_distances(part, centroids).argmin(-1) for part in points.split(chunk)])
    sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
    counts = torch.bincount(nearest, minlength=len(centroids)).unsqueeze(1).to(points.dtype)
    empty = counts.squeeze(1) == 0
    restart = torch.randint(0, len(points), (int(empty.sum()),), generator=generator).to(points.device)
    updated = sums / counts.clamp(min=1)
    updated[empty] = points[restart]
    return updated


@register_model
def patch_ae(**kwargs) -> PatchAutoencoder:
    """Sparse autoencoder on whitened 6×6 patches, at every position, sum-pooled per quadrant."""
    return PatchAutoencoder(**kwargs)
