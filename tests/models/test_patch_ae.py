"""The patch autoencoder: whitening, dense encoding against a loop reference, pooling, checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from latentprobe.models.patch_ae import PatchAutoencoder, latent_codes
from latentprobe.runs import Run
from latentprobe.training.pretrain import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> PatchAutoencoder:
    return PatchAutoencoder(**{**dict(latent_dim=16, patch_size=3, img_size=8, whitening_patches=2000), **overrides})


def correlated_images(count: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random images: neighbouring pixels and the channels are strongly correlated."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 1, side // 2, side // 2, generator=generator)
    images = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return images + 0.3 * torch.randn(count, 3, side, side, generator=generator)


def test_zca_whitening_makes_the_patch_covariance_the_identity():
    """... on the 26 directions a contrast-normalised 27-value patch can vary in (its mean is 0)."""
    model = tiny(zca_eps=1e-6, whitening_patches=100_000)
    images = correlated_images(400)
    raw = model._patches(images).flatten(0, 1)
    identity = torch.eye(27) - torch.full((27, 27), 1 / 27)  # the identity on the zero-mean subspace
    assert (torch.cov(raw.T) - identity).abs().max() > 0.5  # correlated before
    model.prepare(images, generator=torch.Generator().manual_seed(0))
    whitened = model._whiten(model._patches(images).flatten(0, 1))
    torch.testing.assert_close(torch.cov(whitened.T), identity, atol=0.05, rtol=0)


def test_dense_encoding_equals_the_patch_encoder_at_every_position():
    torch.manual_seed(0)
    model = tiny()
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    image = correlated_images(1, seed=1)
    maps = model.feature_map(image)  # (1, K, 6, 6)
    for row in range(6):
        for col in range(6):
            patch = image[0, :, row:row + 3, col:col + 3].reshape(-1)
            patch = (patch - patch.mean()) / (patch.var() + model.contrast_eps).sqrt()  # unbiased var, as MATLAB's
            codes = F.relu(model._whiten(patch) @ F.normalize(model.weight, dim=1).T - model.bias)
            torch.testing.assert_close(maps[0, :, row, col], codes, atol=1e-5, rtol=1e-5)
    # sum-pooled per quadrant (rows/columns 0-2 and 3-5 of the 6×6 map), filter-major
    latent = model.encode(image)
    assert latent.shape == (1, 16)
    for quadrant, (rows, cols) in enumerate([(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(3, 6)),
                                             (slice(3, 6), slice(0, 3)), (slice(3, 6), slice(3, 6))]):
        torch.testing.assert_close(latent[0, quadrant::4], maps[0, :, rows, cols].sum(dim=(-2, -1)))


def test_an_odd_map_gives_its_middle_row_and_column_to_the_first_quadrants():
    # 8 filters, both polarities: 16 codes on a 7×7 map; the quadrants are rows/columns 0-3 and 4-6
    model = tiny(latent_dim=64, encoding="soft_threshold", img_size=9)
    images = torch.rand(2, 3, 9, 9)
    maps = model.feature_map(images)  # (2, 16, 7, 7)
    latent = model.encode(images, chunk=1)
    expected = torch.stack([maps[..., :4, :4].sum((-2, -1)), maps[..., :4, 4:].sum((-2, -1)),
                            maps[..., 4:, :4].sum((-2, -1)), maps[..., 4:, 4:].sum((-2, -1))], dim=-1)
    torch.testing.assert_close(latent, expected.flatten(1))


def test_a_finer_pooling_grid_sums_its_regions_row_by_row(monkeypatch):
    # 8 filters, both polarities, 3×3 regions of a 7×7 map: rows/columns 0-2, 3-4, 5-6
    import latentprobe.models.patch_ae as patch_ae
    model = tiny(latent_dim=144, encoding="soft_threshold", img_size=9, pool_grid=3)
    images = torch.rand(2, 3, 9, 9)
    maps = model.feature_map(images)  # (2, 16, 7, 7)
    spans = [slice(0, 3), slice(3, 5), slice(5, 7)]
    expected = torch.stack([maps[..., rows, cols].sum((-2, -1)) for rows in spans for cols in spans], dim=-1)
    torch.testing.assert_close(model.encode(images, chunk=1), expected.flatten(1))
    monkeypatch.setattr(patch_ae, "FUSE_ABOVE", 0)  # the compiled pass pools the same regions
    torch.testing.assert_close(model.encode(images, chunk=2), expected.flatten(1), atol=1e-5, rtol=1e-5)
    assert tiny(latent_dim=16, pool_grid=1).encode(images[:, :, :8, :8]).shape == (2, 16)  # one sum per code


def test_training_lowers_the_loss_and_evaluation_rebuilds_the_image():
    torch.manual_seed(0)
    model = tiny(latent_dim=64)
    images = correlated_images(64)
    model.prepare(images, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(1)  # the same random patch positions for the first and the last loss
    first = model.loss(images)[0].item()
    for _ in range(60):
        optimizer.zero_grad()
        model.loss(images)[0].backward()
        optimizer.step()
    torch.manual_seed(1)
    assert model.loss(images)[0].item() < 0.8 * first
    model.eval()
    loss, reconstruction = model.loss(images)
    assert reconstruction.shape == images.shape and torch.isfinite(loss)


@pytest.mark.parametrize("options, message", [
    (dict(latent_dim=18), "latent_dim is 4 × the number of filters"),
    (dict(latent_dim=0), "latent_dim is 4 × the number of filters"),
    (dict(patch_size=5), "patch_size 5 does not fit a 8x8 image"),
    (dict(pool_grid=7), "pool_grid 7 must be 1 … 6"),
    (dict(pool_grid=3), "latent_dim is 9 × the number of filters"),
])
def test_bad_sizes_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_whitening_on_too_few_patches_is_a_clear_error():
    with pytest.raises(ValueError, match="whitening 27-value patches needs at least 54 patches, got 20"):
        tiny(whitening_patches=20).prepare(correlated_images(4))


def test_checkpoint_carries_the_whitening_and_reproduces_latents_bit_for_bit(cifar10_root, tmp_path):
    run = train(TrainConfig(model="patch_ae", latent_dim=64, model_args={"whitening_patches": 5000},
                            data_dir=str(cifar10_root), download=False, val_size=40, epochs=1, batch_size=32,
                            device="cpu", out=str(tmp_path / "run")))
    model = Run(run).model("cpu")
    assert not torch.equal(Run(run).checkpoint["best_model"]["zca_matrix"], torch.eye(108))  # fitted, and saved
    images = torch.randn(5, 3, 32, 32)
    again = Run(run).model("cpu")
    assert torch.equal(model.encode(images), again.encode(images))
    assert model.encode(images).shape == (5, 64)


def test_winner_take_all_keeps_the_strongest_responses_and_soft_threshold_splits_polarity():
    torch.manual_seed(0)
    model = tiny(latent_dim=64, activation="winner_take_all", winners=2, encoding="soft_threshold")  # 8 filters
    assert model.num_filters == 8
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    whitened = model._whiten(model._patches(correlated_images(2, seed=1)).flatten(0, 1))  # (72, 27)
    responses = whitened @ F.normalize(model.weight, dim=1).T
    codes = model.encode_patches(whitened)
    assert ((codes != 0).sum(dim=1) == 2).all()  # two winners per patch, with their sign
    strongest = responses.abs().topk(2, dim=1).indices
    torch.testing.assert_close(codes.gather(1, strongest), responses.gather(1, strongest))
    codes_at_positions = torch.cat(latent_codes(responses, model.encoding, model.bias, model.threshold), dim=1)
    # both polarities past the threshold: (72, 16)
    torch.testing.assert_close(codes_at_positions,
                               torch.cat([F.relu(responses - 0.25), F.relu(-responses - 0.25)], 1))
    assert model.encode(correlated_images(3)).shape == (3, 64)
    before = model._patch_loss(whitened)[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model._patch_loss(whitened)[0].backward()
        optimizer.step()
    assert model._patch_loss(whitened)[0] < 0.95 * before  # training fits the patches better


@pytest.mark.parametrize("options, message", [
    (dict(encoding="soft_threshold", latent_dim=20), "multiple of 8"),
    (dict(activation="winner_take_all", winners=5), "winners 5"),
    (dict(activation="top1"), "unknown activation"),
])
def test_bad_winner_take_all_options_get_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_lloyd_step_moves_centroids_to_means_and_zeroes_an_empty_one():
    """The released 2011 code's k-means step on a hand-computed case."""
    from latentprobe.models.patch_ae import lloyd_step
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    centroids = torch.tensor([[1.0, 1.0], [11.0, 9.0], [-50.0, 50.0]])
    moved = lloyd_step(points, centroids, chunk=3)  # chunks must not change the answer
    torch.testing.assert_close(moved, torch.tensor([[1.0, 0.0], [11.0, 10.0], [0.0, 0.0]]))


def test_kmeans_dictionary_finds_the_clusters_and_triangle_encodes_by_distance():
    from latentprobe.models.patch_ae import lloyd_step
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 27, generator=gen) * 5
    points = centres.repeat(50, 1) + 0.1 * torch.randn(200, 27, generator=gen)
    found = points[:4] + 2.0  # one start off each cluster (rows cycle through the four)
    for _ in range(3):
        found = lloyd_step(points, found)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.1  # every cluster has its centroid

    model = tiny(latent_dim=32, encoding="triangle", kmeans_iterations=50)  # 8 centroids, 4 sums each
    images = correlated_images(300)
    model.prepare(images, generator=torch.Generator().manual_seed(0))
    whitened = model._whiten(model._patches(images[:20]).flatten(0, 1))
    # started at randn · 0.1 with the generator, as the released code starts them
    start = 0.1 * torch.randn(8, 27, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model.weight, start)

    def quantisation_error(filters):
        return torch.cdist(whitened, filters).min(dim=1).values.pow(2).mean()

    assert quantisation_error(model.weight) < 0.9 * quantisation_error(
        model._whiten(model._sample(images, 8, torch.Generator().manual_seed(1))[:8]))
    distances = torch.cdist(whitened, model.weight)  # (N, K)
    expected = F.relu(distances.mean(dim=1, keepdim=True) - distances)
    codes = model.feature_map(images[:20]).flatten(2).transpose(1, 2).flatten(0, 1)  # (N, K), positions row-major
    torch.testing.assert_close(codes, expected, atol=1e-4, rtol=1e-4)
    assert model.encode(images[:3]).shape == (3, 32)
    with pytest.raises(ValueError, match="kmeans_iterations"):
        tiny(kmeans_iterations=-1)


def test_a_flat_patch_is_contrast_normalised_to_zero_in_pixel_values():
    """A grey patch is flat in pixel values, not after the data layer's per-channel normalisation:
    the model undoes that normalisation first (Coates et al. normalise raw pixels)."""
    from latentprobe.data.cifar import Normalizer
    model = PatchAutoencoder(latent_dim=16, whitening_patches=500)
    normalizer = Normalizer("cifar10")
    grey = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    model.prepare(normalizer(torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)),
                  generator=torch.Generator().manual_seed(0), normalizer=normalizer)
    assert model._patches(normalizer(grey)).abs().max() < 1e-4  # 0 up to float rounding of the undoing
    before = PatchAutoencoder(latent_dim=16, contrast_eps=0.0025)  # the old pipeline: on normalised values
    assert before._patches(normalizer(grey)).norm(dim=-1).min() > 5


def test_winner_take_all_loss_from_the_winners_equals_the_dense_code_and_gradient():
    torch.manual_seed(0)
    model = tiny(latent_dim=64, activation="winner_take_all", winners=2)
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    whitened = model._whiten(model._patches(correlated_images(4, seed=2)).flatten(0, 1))
    loss, _ = model._patch_loss(whitened)
    (fast,) = torch.autograd.grad(loss, model.weight)
    dense = (model.decode_patches(model.encode_patches(whitened)) - whitened).pow(2).sum(-1).mean()
    (slow,) = torch.autograd.grad(dense, model.weight)
    torch.testing.assert_close(loss, dense)
    torch.testing.assert_close(fast, slow)


def test_the_evaluation_tiling_covers_every_pixel_and_rebuilds_the_image():
    model = tiny(latent_dim=27 * 4, activation="winner_take_all", winners=27)  # as many winners as dimensions
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.weight.copy_(torch.eye(27))  # an orthonormal basis of the whitened space decodes any patch
    images = correlated_images(3, seed=3)
    loss, rebuilt = model.eval().loss(images)
    assert loss < 1e-6
    torch.testing.assert_close(rebuilt, images, atol=1e-4, rtol=1e-4)


def test_the_fused_pass_equals_the_eager_one(monkeypatch):
    import latentprobe.models.patch_ae as patch_ae
    model = tiny(latent_dim=64, encoding="soft_threshold")
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    images = correlated_images(16, seed=4)
    eager = model.encode(images, chunk=8)
    monkeypatch.setattr(patch_ae, "FUSE_ABOVE", 0)
    torch.testing.assert_close(model.encode(images, chunk=8), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding, activation", [("soft_threshold", "winner_take_all"), ("relu", "relu"),
                                                  ("triangle", "winner_take_all")])
def test_a_flip_invariant_latent_is_the_same_for_an_image_and_its_mirror_image(encoding, activation):
    parts = 2 if encoding == "soft_threshold" else 1
    model = tiny(latent_dim=8 * 4 * parts, encoding=encoding, activation=activation, flip_invariant=True, img_size=9,
                 kmeans_iterations=2 if encoding == "triangle" else 0)  # 7×7 map: its middle column in both halves
    model.prepare(correlated_images(300, side=9), generator=torch.Generator().manual_seed(0))
    assert model._filters().shape == (16, 27)  # 8 learned filters and their mirror images
    # the whitening commutes with mirroring: Z = M Z M
    torch.testing.assert_close(model.zca_matrix[model.mirror][:, model.mirror], model.zca_matrix, atol=1e-5, rtol=0)
    images = correlated_images(4, side=9, seed=5)
    latent = model.encode(images, chunk=2)
    assert latent.shape == (4, 8 * 4 * parts)
    torch.testing.assert_close(model.encode(images.flip(-1), chunk=2), latent, atol=1e-4, rtol=1e-4)
    # by hand: filter k's sum over a region plus its mirror image's (filter 8 + k) over the mirrored region
    maps = model.feature_map(images)  # (4, 16·parts, 7, 7)
    halves = [slice(0, 4), slice(3, 7)]
    sums = torch.stack([maps[..., rows, cols].sum((-2, -1)) for rows in halves for cols in halves], dim=-1)
    sums = sums.view(4, parts, 2, 8, 2, 2)
    torch.testing.assert_close(latent, (sums[:, :, 0] + sums[:, :, 1].flip(-1)).flatten(1), atol=1e-4, rtol=1e-4)


def test_a_plain_latent_is_not_flip_invariant():  # the check above can fail
    model = tiny(latent_dim=64, encoding="soft_threshold", activation="winner_take_all", img_size=9)
    model.prepare(correlated_images(300, side=9), generator=torch.Generator().manual_seed(0))
    images = correlated_images(4, side=9, seed=5)
    assert (model.encode(images.flip(-1)) - model.encode(images)).abs().max() > 0.1


def test_a_flip_invariant_model_trains_its_filters_through_their_mirror_images():
    torch.manual_seed(0)
    model = tiny(latent_dim=32, activation="winner_take_all", flip_invariant=True)
    images = correlated_images(64)
    model.prepare(images, generator=torch.Generator().manual_seed(0))
    model.train()
    loss = model.loss(images)[0]
    loss.backward()
    assert model.weight.shape == (8, 27) and model.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="flip_invariant must be true or false"):
        tiny(flip_invariant="yes")


def test_a_bfloat16_encoding_stays_within_a_percent_of_float32():
    model = tiny(latent_dim=64, encoding="soft_threshold", activation="winner_take_all", flip_invariant=True)
    model.prepare(correlated_images(300), generator=torch.Generator().manual_seed(0))
    fast = tiny(latent_dim=64, encoding="soft_threshold", activation="winner_take_all", flip_invariant=True,
                precision="bfloat16")
    fast.load_state_dict(model.state_dict())
    images = correlated_images(16, seed=6)
    exact, rounded = model.encode(images, chunk=8), fast.encode(images, chunk=8)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)  # rounded, and summed in float32
    assert (rounded - exact).norm() < 0.01 * exact.norm()
    assert fast.feature_map(images).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'half'; use float32 or bfloat16"):
        tiny(precision="half")
