"""Tests of the ViT masked autoencoder: masking, patches, loss, shapes, presets, validation."""

import json

import pytest
import torch

from latentprobe.models import create_model, list_models
from latentprobe.models.mae import MaskedAutoencoderViT, random_masking

MAE_PRESETS = [name for name in list_models() if name.startswith("mae_")]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def tiny_mae(**overrides) -> MaskedAutoencoderViT:
    config = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                  decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    return MaskedAutoencoderViT(**{**config, **overrides})


@pytest.mark.parametrize(
    "length, mask_ratio, num_keep", [(64, 0.75, 16), (256, 0.75, 64), (16, 0.5, 8), (10, 0.33, 7)]
)
def test_masking_keeps_requested_count_and_restores_order(length, mask_ratio, num_keep):
    batch, dim = 5, 3
    tokens = torch.arange(batch * length * dim, dtype=torch.float32).reshape(batch, length, dim)
    generator = torch.Generator().manual_seed(0)
    kept, mask, ids_restore = random_masking(tokens, mask_ratio, generator)

    assert kept.shape == (batch, num_keep, dim)
    assert mask.shape == (batch, length)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(dim=1) == length - num_keep).all()
    # The kept tokens are exactly the visible ones (mask 0), in some order.
    for sample in range(batch):
        visible = tokens[sample][mask[sample] == 0]
        assert torch.equal(kept[sample][kept[sample][:, 0].argsort()], visible)
    # Un-shuffling [kept, hidden] with ids_restore gives back the original sequence.
    ids_shuffle = ids_restore.argsort(dim=1)
    shuffled = tokens.gather(1, ids_shuffle.unsqueeze(-1).expand(-1, -1, dim))
    assert torch.equal(shuffled[:, :num_keep], kept)
    restored = shuffled.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    assert torch.equal(restored, tokens)
    # Samples are masked independently.
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, batch))


def test_masking_is_deterministic_with_a_generator():
    tokens = torch.randn(4, 64, 8)
    first = random_masking(tokens, 0.75, torch.Generator().manual_seed(3))
    second = random_masking(tokens, 0.75, torch.Generator().manual_seed(3))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("patch_size", [2, 4])
def test_patchify_unpatchify_round_trip(patch_size):
    model = tiny_mae(patch_size=patch_size)
    images = torch.randn(3, 3, 16, 16)
    patches = model.patchify(images)
    assert patches.shape == (3, (16 // patch_size) ** 2, patch_size * patch_size * 3)
    assert torch.equal(model.unpatchify(patches), images)
    # Patch 1 (row 0, column 1) holds pixels [0:p, p:2p] as (p, p, C).
    expected = images[0, :, :patch_size, patch_size : 2 * patch_size].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_ignores_visible_patches(norm_pix_loss):
    torch.manual_seed(0)
    model = tiny_mae(norm_pix_loss=norm_pix_loss)
    images = torch.randn(2, 3, 16, 16)
    pred = torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5, 7]] = 1
    mask[1, [0, 2, 3, 15]] = 1
    base = model.forward_loss(images, pred, mask)

    changed_visible = pred.clone()
    changed_visible[mask == 0] += 10.0
    assert torch.allclose(model.forward_loss(images, changed_visible, mask), base)

    changed_hidden = pred.clone()
    changed_hidden[0, 5] += 10.0
    assert model.forward_loss(images, changed_hidden, mask) > base + 1.0


def test_loss_is_the_mean_squared_error_of_hidden_patches():
    model = tiny_mae()
    images = torch.randn(2, 3, 16, 16)
    pred = torch.randn(2, 16, 48)
    mask = (torch.rand(2, 16) < 0.5).float()
    mask[0, 0] = 1
    hidden = mask.bool()
    expected = ((pred - model.patchify(images))[hidden] ** 2).mean()
    assert torch.allclose(model.forward_loss(images, pred, mask), expected)


def test_tiny_mae_overfits_a_handful_of_images():
    torch.manual_seed(0)
    # 4 patches of 8x8, half of them hidden: the model must memorise each image to fill them in.
    model = tiny_mae(patch_size=8, embed_dim=64, decoder_embed_dim=64, mask_ratio=0.5)
    images = torch.randn(8, 3, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(250):
        loss, _, _ = model(images, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / 20, (first, last)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encode_shape_and_pooling(pool):
    model = tiny_mae(pool=pool).eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = model.forward_features(images)
        latent = model.encode(images)
    assert tokens.shape == (3, 1 + 16, 32)
    assert latent.shape == (3, model.latent_dim)
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
    assert torch.allclose(latent, expected)
    other = "mean" if pool == "cls" else "cls"
    with torch.no_grad():
        assert not torch.allclose(model.encode(images, pool=other), latent)
        stages = model.stage_outputs(images)  # one pooled output per block; the last is the latent
    assert len(stages) == len(model.blocks) and torch.allclose(stages[-1], latent, atol=1e-6)


def test_encode_sees_every_patch_without_masking():
    model = tiny_mae().eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.encode(images), model.encode(images))  # no random masking


@pytest.mark.parametrize("name", MAE_PRESETS)
def test_presets_build_and_encode(name):
    model = create_model(name).eval()
    assert model.latent_dim == model.config["embed_dim"]
    assert all(block.attn.fused_attn for block in [*model.blocks, *model.decoder_blocks])
    with torch.no_grad():
        latent = model.encode(torch.randn(2, 3, 32, 32))
    assert latent.shape == (2, model.latent_dim)


def test_expected_presets_are_registered():
    assert {"mae_vit_tiny_patch4", "mae_vit_tiny_patch2", "mae_vit_micro_patch4"} <= set(MAE_PRESETS)


def test_preset_overrides_and_config_round_trip():
    model = create_model("mae_vit_micro_patch4", mask_ratio=0.6, pool="mean")
    config = json.loads(json.dumps(model.config))
    assert config["mask_ratio"] == 0.6 and config["pool"] == "mean" and config["patch_size"] == 4
    rebuilt = MaskedAutoencoderViT(**config)
    assert rebuilt.load_state_dict(model.state_dict()) is not None


def test_protocol_outputs():
    torch.manual_seed(0)
    model = tiny_mae()
    images = torch.randn(2, 3, 16, 16)
    loss, reconstruction = model.loss(images)
    assert loss.ndim == 0 and loss.requires_grad
    assert reconstruction.shape == images.shape

    generator = torch.Generator().manual_seed(1)
    grids = model.reconstruct(images, generator=generator)
    assert set(grids) == {"masked", "reconstruction", "prediction"}
    _, _, mask = model(images, generator=torch.Generator().manual_seed(1))
    hidden = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48)).bool()  # (B, 3, H, W)
    assert (grids["masked"][hidden] == 0).all()
    assert torch.equal(grids["masked"][~hidden], images[~hidden])
    assert torch.equal(grids["reconstruction"][~hidden], images[~hidden])
    assert torch.equal(grids["reconstruction"][hidden], grids["prediction"][hidden])


def test_norm_pix_predictions_are_denormalised_for_display():
    model = tiny_mae(norm_pix_loss=True)
    images = torch.rand(2, 3, 16, 16) * 3 + 1
    target = model.patchify(images)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    perfect = (target - mean) / (var + 1e-6).sqrt()
    model.forward_decoder = lambda latent, ids_restore: perfect  # a decoder that is always right
    grids = model.reconstruct(images)
    assert torch.allclose(grids["prediction"], images, atol=1e-5)
    assert torch.allclose(grids["reconstruction"], images, atol=1e-5)


def test_image_size_not_divisible_by_patch_is_rejected():
    with pytest.raises(ValueError, match="patch_size 5"):
        MaskedAutoencoderViT(img_size=32, patch_size=5)
    model = tiny_mae()
    with pytest.raises(ValueError, match="patch_size 4"):
        model.patchify(torch.randn(1, 3, 18, 18))
    with pytest.raises(ValueError, match="16x16"):
        model.encode(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("mask_ratio", [0, 1, 1.5, -0.1])
def test_bad_mask_ratio_is_rejected(mask_ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=mask_ratio)
    model = tiny_mae()
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(1, 3, 16, 16), mask_ratio=mask_ratio)


def test_no_weight_decay_and_layer_id():
    model = tiny_mae(depth=3)
    names = dict(model.named_parameters())
    no_decay = model.no_weight_decay()
    assert {"cls_token", "mask_token"} <= no_decay
    assert {"pos_embed", "decoder_pos_embed"} <= no_decay
    assert not any(p.requires_grad for n, p in model.named_buffers() if "pos_embed" in n)
    assert "pos_embed" in dict(model.named_buffers())

    assert model.layer_id("patch_embed.weight") == 0
    assert model.layer_id("cls_token") == 0
    assert model.layer_id("pos_embed") == 0
    assert model.layer_id("blocks.0.attn.qkv.weight") == 1
    assert model.layer_id("blocks.2.mlp.fc2.bias") == 3
    assert model.layer_id("norm.weight") == 4
    assert model.layer_id("decoder_blocks.0.norm1.weight") == 4
    assert model.layer_id("mask_token") == 4
    assert all(0 <= model.layer_id(name) <= 4 for name in names)
