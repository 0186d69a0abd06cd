"""A single-layer autoencoder on whitened image patches, applied convolutionally.

The pipeline of Coates, Lee & Ng (AISTATS 2011), with a trained autoencoder as its dictionary:

1. every p×p patch of the image in 0–255 pixel values (the data layer's normalisation undone) is
   brightness/contrast normalised, ``(x - mean(x)) / sqrt(var(x) + contrast_eps)`` as in the
   paper's released code (a flat patch becomes 0), and ZCA-whitened with statistics fitted once
   on random patches of the training split (``prepare``);
2. the autoencoder reads one whitened patch x (D = 3·p·p values) with K unit-norm filters W (K, D)
   and a tied decoder ``Wᵀ h``; the loss is the squared error on the whitened patch. Its code h,
   by ``activation``:
   - ``relu``: ``h = relu(W x - b)``, plus ``sparsity · mean(h)`` in the loss to keep most units
     silent;
   - ``winner_take_all``: only the ``winners`` largest responses ``|W x|`` of each patch are kept
     (with their sign), the rest set to 0 (a k-sparse autoencoder; with one winner each filter
     learns a cluster of patches, as k-means does);
3. the latent of an image is an encoding at every position (stride 1), sum-pooled over the four
   quadrants of the map (``pool_grid=2``; ``pool_grid=G`` sums over a G×G grid of regions instead,
   finer pooling that keeps more of where things are, G² sums per code). ``encoding``: ``relu``
   (the training code without its top-k, K values per position, ``latent_dim = 4K``) or
   ``soft_threshold``, both polarities of the response past a fixed threshold α: ``relu(W x - α)``
   and ``relu(-W x - α)`` (2K values, ``latent_dim = 8K``), the encoding that reads a patch
   dictionary best in Coates & Ng (ICML 2011); or ``triangle``, the 2011 paper's k-means encoding,
   ``relu(mean(z) - z_k)`` with ``z_k`` the distance of the whitened patch to filter k as stored
   (K values per position, ``latent_dim = 4K``). (With ``pool_grid=G``, G² in place of 4.)

``flip_invariant=true`` makes the latent the same for an image and its mirror image: the
dictionary holds each learned filter and its mirror image (2K filters for K learned), the
whitening is fitted on the patches and their mirror images, the pooling regions are symmetric
(an odd map's middle row and column belong to both halves), and each filter's sum over a region
is added to its mirror image's sum over the mirrored region (``latent_dim`` as for K filters).
Mirror images of the training images then add nothing to a probe: ``evaluate --flip-train``
would only extract each image twice.

The reference point, k-means with the triangle encoding, shares this pipeline:
``kmeans_iterations=N`` makes ``prepare`` replace the filters by k-means centroids of the
whitening sample, as the paper's released code fits them: started at ``randn · 0.1``, N Lloyd
iterations (50 in that code), a centroid left without points set to 0. It is a dictionary
fitted, not an autoencoder trained: ``evaluate --baselines kmeans`` builds it from a run's own
options and whitening.

Cost and memory: the dense encoding is one matrix product per chunk of ``CHUNK`` images, then
the codes and their quadrant sums in one pass over the responses, compiled by ``torch.compile``
when the chunk is large (``FUSE_ABOVE``), so no transient tensor grows past ~100 MB at K = 4,000.
Training reads ``patches_per_image`` random positions per image and decodes only the winners;
evaluation (the validation loss and the pictures) reads a fixed tiling of positions that covers
every pixel, not all of them.

``precision=bfloat16`` computes the dense encoding's product (and training's choice of winners)
from bfloat16 inputs, its codes still summed in float32: the product at 2.4× its float32 speed
and the extraction at 2.1× on a CPU with bfloat16 dot products (AVX512-BF16 or AMX; slower on
one without), responses within about 0.3 % (docs/RESULTS.md has what it moves in a probe).

Whitening statistics and the data layer's pixel statistics are buffers, so they travel in the
checkpoint with the filters and ``encode`` gives the same latent wherever the checkpoint is loaded.
"""

import logging
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.models import register_model

ACTIVATIONS = ("relu", "winner_take_all")
ENCODINGS = ("relu", "soft_threshold", "triangle")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FUSE_ABOVE = 2**22  # responses per chunk above which the code + pooling pass is compiled (fused)


class PatchAutoencoder(nn.Module):
    CHUNK = 8  # images per dense pass: their responses are CHUNK × (S-p+1)² × K floats (93 MB at K = 4,000)
    PATCH_CHUNK = 4096  # patches per matrix product where every filter's response is needed at once

    def __init__(self, *, latent_dim: int = 6400, patch_size: int = 6, img_size: int = 32, in_chans: int = 3,
                 sparsity: float = 0.1, threshold: float = 0.25, contrast_eps: float = 10.0,
                 zca_eps: float = 0.1, whitening_patches: int = 400_000, patches_per_image: int = 32,
                 activation: str = "relu", winners: int = 1, encoding: str = "relu", kmeans_iterations: int = 0,
                 pool_grid: int = 2, flip_invariant: bool = False, precision: str = "float32"):
        super().__init__()
        if activation not in ACTIVATIONS or encoding not in ENCODINGS:
            raise ValueError(f"unknown activation {activation!r} or encoding {encoding!r}; activation: "
                             f"{', '.join(ACTIVATIONS)}; encoding: {', '.join(ENCODINGS)}")
        if not 1 <= pool_grid <= img_size - patch_size + 1:
            raise ValueError(f"pool_grid {pool_grid} must be 1 … {img_size - patch_size + 1} (the side of the "
                             f"map of patch positions); 2 is the reference (quadrants)")
        polarities = 2 if encoding == "soft_threshold" else 1
        per_filter = pool_grid**2 * polarities
        if latent_dim < per_filter or latent_dim % per_filter:
            raise ValueError(f"latent_dim is {per_filter} × the number of filters (one sum per pooling region"
                             f"{' and polarity' if polarities == 2 else ''}, {pool_grid}×{pool_grid} regions); got "
                             f"{latent_dim}, use a positive multiple of {per_filter} such as {per_filter * 1600} "
                             f"(1,600 filters)")
        if not 1 <= winners <= latent_dim // per_filter:
            raise ValueError(f"winners {winners} must be 1 … the number of filters ({latent_dim // per_filter})")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
        if not isinstance(flip_invariant, bool):
            raise ValueError(f"flip_invariant must be true or false, got {flip_invariant!r}")
        if kmeans_iterations < 0:
            raise ValueError(f"kmeans_iterations must be 0 (no k-means) or more, got {kmeans_iterations}")
        if not 1 <= patch_size <= img_size // 2:
            raise ValueError(f"patch_size {patch_size} does not fit a {img_size}x{img_size} image split in "
                             f"quadrants; use 1 … {img_size // 2} (6 is the reference)")
        for name, value in (("contrast_eps", contrast_eps), ("zca_eps", zca_eps), ("threshold", threshold),
                            ("sparsity", sparsity)):
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
        if whitening_patches < 1 or patches_per_image < 1:
            raise ValueError(f"whitening_patches and patches_per_image must be at least 1, got "
                             f"{whitening_patches} and {patches_per_image}")
        self.config = dict(latent_dim=latent_dim, patch_size=patch_size, img_size=img_size, in_chans=in_chans,
                           sparsity=sparsity, threshold=threshold, contrast_eps=contrast_eps, zca_eps=zca_eps,
                           whitening_patches=whitening_patches, patches_per_image=patches_per_image,
                           activation=activation, winners=winners, encoding=encoding,
                           kmeans_iterations=kmeans_iterations, pool_grid=pool_grid, flip_invariant=flip_invariant,
                           precision=precision)
        self.latent_dim, self.num_filters = latent_dim, latent_dim // per_filter
        self.activation, self.winners, self.encoding, self.threshold = activation, winners, encoding, threshold
        self.kmeans_iterations, self.pool_grid, self.flip_invariant = kmeans_iterations, pool_grid, flip_invariant
        self.precision = PRECISIONS[precision]
        self.patch_size, self.img_size, self.in_chans = patch_size, img_size, in_chans
        self.sparsity, self.contrast_eps, self.zca_eps = sparsity, contrast_eps, zca_eps
        self.whitening_patches, self.patches_per_image = whitening_patches, patches_per_image
        patch_dim = in_chans * patch_size * patch_size
        self.weight = nn.Parameter(torch.randn(self.num_filters, patch_dim) / patch_dim**0.5)  # (K, D)
        self.bias = nn.Parameter(torch.full((self.num_filters,), float(threshold)))
        # The data layer's per-channel normalisation (0–255 units), undone before contrast
        # normalisation; identity until ``prepare`` is given the normaliser.
        self.register_buffer("pixel_mean", torch.zeros(in_chans))
        self.register_buffer("pixel_std", torch.ones(in_chans))
        # ZCA: whitened = (patch - zca_mean) @ zca_matrix; identity until ``prepare`` fits them.
        self.register_buffer("zca_mean", torch.zeros(patch_dim))
        self.register_buffer("zca_matrix", torch.eye(patch_dim))
        # where each value of a patch goes in its mirror image (left-right; unfold's order C, row, column)
        columns = torch.arange(patch_dim).view(in_chans, patch_size, patch_size)
        self.register_buffer("mirror", columns.flip(-1).flatten(), persistent=False)

    @property
    def map_side(self) -> int:
        return self.img_size - self.patch_size + 1

    # ---- patches

    def _normalised_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → the patch at every position, in pixel values, minus its mean and over its
        contrast ``sqrt(var + contrast_eps)`` (unbiased variance, as the released code's ``var``),
        (B, L, D) with L = (S-p+1)²; and those means and contrasts, (B, L, 1) each."""
        if images.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"expected images of shape ({self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(images.shape[1:])}")
        pixels = images.float() * self.pixel_std.view(1, -1, 1, 1) + self.pixel_mean.view(1, -1, 1, 1)
        patches = F.unfold(pixels, self.patch_size).transpose(1, 2)
        mean = patches.mean(dim=-1, keepdim=True)
        centred = patches - mean
        scale = (centred.pow(2).sum(dim=-1, keepdim=True) / max(patches.shape[-1] - 1, 1) + self.contrast_eps).sqrt()
        return centred / scale, mean, scale

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        return self._normalised_patches(images)[0]

    def _whiten(self, patches: torch.Tensor) -> torch.Tensor:
        return (patches - self.zca_mean) @ self.zca_matrix

    def _dictionary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filters as stored (K, D) and their biases (K,); with ``flip_invariant``, the learned
        filters and then their mirror images (2K, D), each mirror image with its filter's bias."""
        if not self.flip_invariant:
            return self.weight, self.bias
        return torch.cat([self.weight, self.weight[:, self.mirror]]), self.bias.repeat(2)

    def _filters(self) -> torch.Tensor:
        return F.normalize(self._dictionary()[0], dim=1)  # (K, D), unit norm: the threshold has one scale

    def _product(self, whitened: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """``whitened @ filtersᵀ`` of the dense encoding and the winners' choice, in ``precision``:
        bfloat16 rounds both to 8 significant bits and the product (float32 sums inside) to
        bfloat16. The training loss is float32 either way."""
        return whitened.to(self.precision) @ filters.to(self.precision).T

    def _tiles(self) -> torch.Tensor:
        """Positions (indices into the L of a map) of a tiling that covers every pixel: every p-th
        row and column, and the last one."""
        side, p = self.map_side, self.patch_size
        starts = sorted(set(range(0, side, p)) | {side - 1})
        return torch.tensor([row * side + col for row in starts for col in starts])

    @torch.no_grad()
    def prepare(self, images: torch.Tensor, generator: torch.Generator | None = None, normalizer=None) -> None:
        """Fit the ZCA whitening on ``whitening_patches`` random patches of ``images`` (the
        training split, normalised by ``normalizer``, whose per-channel mean and std are kept so
        patches are contrast-normalised in pixel values): eigenvectors U and eigenvalues S of their
        covariance give ``U diag(1/sqrt(S + zca_eps)) Uᵀ``. A winner-take-all autoencoder also
        starts each filter on one of these patches, whitened (so its untrained baseline is a
        dictionary of random patches, itself a strong one: Coates & Ng 2011); ``kmeans_iterations``
        instead fits k-means centroids of the whitened sample, as the released 2011 code does."""
        if normalizer is not None:
            self.pixel_mean.copy_(normalizer.mean.flatten().to(self.pixel_mean))
            self.pixel_std.copy_(normalizer.std.flatten().to(self.pixel_std))
        patch_dim = self.zca_matrix.shape[0]
        samples = self.whitening_sample(images, generator)
        if len(samples) < 2 * patch_dim:
            raise ValueError(f"whitening {patch_dim}-value patches needs at least {2 * patch_dim} patches, "
                             f"got {len(samples)}; use more training images or a larger whitening_patches")
        mean = samples.mean(dim=0)
        if self.flip_invariant:  # the statistics of the patches and their mirror images: M Z M = Z
            mean = (mean + mean[self.mirror]) / 2
        scatter = (samples - mean).T @ (samples - mean)
        if self.flip_invariant:
            covariance = (scatter + scatter[self.mirror][:, self.mirror]) / (2 * len(samples) - 1)
        else:
            covariance = scatter / (len(samples) - 1)
        values, vectors = torch.linalg.eigh(covariance)
        matrix = vectors @ torch.diag((values.clamp(min=0) + self.zca_eps).rsqrt()) @ vectors.T
        self.zca_mean.copy_(mean.float())
        self.zca_matrix.copy_(matrix.float())
        if self.kmeans_iterations:
            whitened = self._whiten(samples.float())
            centroids = 0.1 * torch.randn(self.num_filters, patch_dim, generator=generator).to(whitened)
            for _ in range(self.kmeans_iterations):
                centroids = lloyd_step(whitened, centroids)
            self.weight.copy_(centroids.to(self.weight.device))
        elif self.activation == "winner_take_all":  # filters start on patches: none dead
            picked = torch.randint(0, len(samples), (self.num_filters,), generator=generator).to(samples.device)
            self.weight.copy_(self._whiten(samples[picked].float()).to(self.weight.device))

    def whitening_sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ``whitening_patches`` random patches of ``images`` that ``prepare`` fits the whitening
        (and k-means) on, contrast-normalised, (N, D) float64; the same for the same generator state."""
        per_image = max(1, -(-self.whitening_patches // len(images)))
        return torch.cat([self._sample(images[i:i + 100], per_image, generator).double()
                          for i in range(0, len(images), 100)])[:self.whitening_patches]

    def _sample(self, images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` random patches of each image, contrast-normalised, (B·count, D)."""
        patches = self._patches(images)  # (B, L, D)
        index = torch.randint(0, patches.shape[1], (len(images), count), generator=generator)
        index = index.to(images.device)
        return patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1])).flatten(0, 1)

    # ---- the autoencoder on one patch

    def _winners(self, whitened: torch.Tensor) -> torch.Tensor:
        """(N, D) whitened patches → (N, winners) indices of the largest responses |W x| (no gradient
        flows through the choice, as none flows through a top-k)."""
        filters = self._filters().detach()
        with torch.no_grad():
            return torch.cat([self._product(part, filters).abs().topk(self.winners, dim=-1).indices
                              for part in whitened.split(self.PATCH_CHUNK)])

    def encode_patches(self, whitened: torch.Tensor) -> torch.Tensor:
        """(N, D) whitened patches → (N, K) sparse codes: the autoencoder's own ``activation``."""
        responses = whitened @ self._filters().T
        if self.activation == "relu":
            return F.relu(responses - self._dictionary()[1])
        kept = self._winners(whitened)  # winner-take-all, per patch
        return torch.zeros_like(responses).scatter(-1, kept, responses.gather(-1, kept))

    def decode_patches(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self._filters()  # tied weights: (N, K) → (N, D)

    def _patch_loss(self, whitened: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error of the decoded patches (+ the sparsity penalty of the relu code). The
        winner-take-all code decodes from its winners' filters alone: (N, winners, D) instead of an
        (N, K) code times the whole dictionary, the same values and gradients at a fraction of the work."""
        if self.activation == "relu":
            codes = self.encode_patches(whitened)
            decoded = self.decode_patches(codes)
            penalty = self.sparsity * codes.mean()
        else:
            chosen = self._filters()[self._winners(whitened)]  # (N, winners, D)
            codes = (chosen @ whitened.unsqueeze(-1)).squeeze(-1)  # (N, winners), with their sign
            decoded = (codes.unsqueeze(-1) * chosen).sum(dim=1)
            penalty = 0.0  # top-k is sparse by itself
        return (decoded - whitened).pow(2).sum(dim=-1).mean() + penalty, decoded

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error on whitened patches (+ the sparsity penalty). Training reads
        ``patches_per_image`` random positions per image (and returns the input as its
        "reconstruction"); evaluation reads the fixed tiling of positions that covers every pixel
        and puts the image back together from it."""
        if self.training:
            return self._patch_loss(self._whiten(self._sample(images, self.patches_per_image)))[0], images
        return self._tiled_loss(images)

    def _tiled_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss over the tiling's patches, and the images rebuilt from them."""
        tiles = self._tiles().to(images.device)
        patches, mean, scale = (t[:, tiles] for t in self._normalised_patches(images))  # (B, T, ·)
        loss, decoded = self._patch_loss(self._whiten(patches.flatten(0, 1)))
        return loss, self._image(decoded.view_as(patches), mean, scale)

    def _image(self, decoded: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Decoded whitened patches (B, T, D) at the tiling's positions un-whitened, given back their
        own mean and contrast, and the overlapping patches averaged into images (B, C, S, S),
        normalised as the input was."""
        patches = (decoded @ torch.linalg.pinv(self.zca_matrix) + self.zca_mean) * scale + mean
        side, size = self.map_side, (self.img_size, self.img_size)
        full = patches.new_zeros(len(patches), side * side, patches.shape[-1])
        full[:, self._tiles().to(patches.device)] = patches
        covered = torch.zeros_like(full[..., :1])
        covered[:, self._tiles().to(patches.device)] = 1.0
        summed = F.fold(full.transpose(1, 2), size, self.patch_size)
        counts = F.fold(covered.expand_as(full).transpose(1, 2), size, self.patch_size)
        pixels = summed / counts.clamp(min=1)
        return (pixels - self.pixel_mean.view(1, -1, 1, 1)) / self.pixel_std.view(1, -1, 1, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict:
        return {"reconstruction": self._tiled_loss(images)[1]}

    # ---- the latent of an image

    def _responses(self, whitened: torch.Tensor) -> torch.Tensor:
        """(…, D) whitened patches → (…, K): ``W x`` for the filters (unit norm), or the squared
        distances to the filters as stored for the triangle code."""
        if self.encoding == "triangle":
            stored = self._dictionary()[0]
            return whitened.pow(2).sum(-1, keepdim=True) - 2 * self._product(whitened, stored).float() + \
                stored.pow(2).sum(-1)
        return self._product(whitened, self._filters())

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Latent codes at every position: (B, K or 2K, S-p+1, S-p+1)."""
        side = self.map_side
        codes = torch.cat(latent_codes(self._responses(self._whiten(self._patches(images))).float(), self.encoding,
                                       self._dictionary()[1], self.threshold), dim=-1)  # (B, L, K or 2K)
        return codes.transpose(1, 2).reshape(len(images), codes.shape[-1], side, side)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The dense encoding, (B, K, S-p+1, S-p+1): what ``encode`` pools."""
        return self.feature_map(images)

    def encode(self, images: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
        """(B, latent_dim): each code summed over the four quadrants of the map (the middle row and
        column, when the map's side is odd, go to the first half), code-major: code k's sums over
        the top-left, top-right, bottom-left and bottom-right quadrants are values 4k … 4k+3. (With
        ``pool_grid=G``: over G×G regions, row by row, the G² values of code k from G²·k.)
        ``chunk`` images at a time: one matrix product, then one pass for codes and sums."""
        side, bias = self.map_side, self._dictionary()[1]
        pooled = []
        for part in images.split(chunk):
            responses = self._responses(self._whiten(self._patches(part))).view(len(part), side, side, -1)
            pool = _fused_pool if responses.numel() >= FUSE_ABOVE and len(part) == chunk else pooled_codes
            pooled.append(pool(responses, self.encoding, bias, self.threshold, self.pool_grid, self.flip_invariant))
        return torch.cat(pooled)


def latent_codes(responses: torch.Tensor, encoding: str, bias: torch.Tensor, threshold: float) -> list[torch.Tensor]:
    """The codes the latent pools, by ``encoding``, as parts of K columns each (pooled part by part):
    ``relu(r - b)``; both polarities ``relu(r - α)``, ``relu(-r - α)``; or the triangle code of
    squared distances d², ``relu(mean(d) - d)``."""
    if encoding == "triangle":
        distances = responses.clamp(min=0).sqrt()
        return [F.relu(distances.mean(dim=-1, keepdim=True) - distances)]
    if encoding == "relu":
        return [F.relu(responses - bias)]
    return [F.relu(responses - threshold), F.relu(-responses - threshold)]


def pooled_codes(responses: torch.Tensor, encoding: str, bias: torch.Tensor, threshold: float,
                 grid: int = 2, flip_invariant: bool = False) -> torch.Tensor:
    """(b, S', S', K) responses → (b, latent_dim): the codes summed over a ``grid`` × ``grid`` split
    of the map (2: its quadrants), regions row by row, code-major. Region i ends at row and column
    ⌈i·S'/grid⌉, so the first half of an odd map takes its middle row and column.

    ``flip_invariant`` (the second half of the K filters the mirror images of the first): region i
    spans ⌊i·S'/grid⌋ … ⌈(i+1)·S'/grid⌉, so an odd map's middle row and column belong to both
    halves and the regions are their own mirror image; each sum of a filter is then added to the
    sum of its mirror image over the mirrored region. An image and its mirror image get the same
    latent, of K/2 · grid² values per code part."""
    side, responses = responses.shape[1], responses.float()  # bfloat16 products summed in float32
    if flip_invariant:
        spans = [(i * side // grid, -(-(i + 1) * side // grid)) for i in range(grid)]
    else:
        edges = [-(-i * side // grid) for i in range(grid + 1)]
        spans = list(zip(edges, edges[1:]))
    sums = []
    for codes in latent_codes(responses, encoding, bias, threshold):
        sums.append(torch.stack([codes[:, top:bottom, left:right].sum((1, 2))
                                 for top, bottom in spans for left, right in spans], dim=-1))
    pooled = torch.cat(sums, dim=1)  # (b, K·parts, grid²)
    if flip_invariant:  # (b, parts, filter or mirror, K/2, rows, columns): a mirror's columns reversed
        halves = pooled.view(len(pooled), len(sums), 2, -1, grid, grid)
        pooled = halves[:, :, 0] + halves[:, :, 1].flip(-1)
    return pooled.flatten(1)  # code-major


_compiled = None


def _fused_pool(*args) -> torch.Tensor:
    """``pooled_codes`` compiled into one pass over the responses (2-4× faster on a CPU than the
    separate passes of eager mode); eager where compilation is unavailable (no C++ compiler)."""
    global _compiled
    if _compiled is None:
        # compiling on a CPU with torch's CUDA build logs that no CUDA runtime is found: true, and no matter
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _compiled = torch.compile(pooled_codes, dynamic=False)
    if _compiled is pooled_codes:
        return pooled_codes(*args)
    try:
        return _compiled(*args)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager pass computes the same
        warnings.warn(f"torch.compile unavailable ({type(err).__name__}); the patch encoding runs eager", stacklevel=2)
        _compiled = pooled_codes
        return pooled_codes(*args)


def lloyd_step(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """One k-means iteration over points (N, D), as in the released 2011 code: each point to its
    nearest centroid (``argmax c·x - |c|²/2``, in chunks: N × K would not fit), each centroid to
    the mean of its points; a centroid with no points becomes 0."""
    half_norms = 0.5 * centroids.pow(2).sum(-1)
    nearest = torch.cat([(part @ centroids.T - half_norms).argmax(-1) for part in points.split(chunk)])
    sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
    counts = torch.bincount(nearest, minlength=len(centroids)).unsqueeze(1).to(points.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


@register_model
def patch_ae(**kwargs) -> PatchAutoencoder:
    """Sparse autoencoder on whitened 6×6 patches, at every position, sum-pooled per quadrant (or G×G regions)."""
    return PatchAutoencoder(**kwargs)
