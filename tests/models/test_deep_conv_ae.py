import pytest
import torch

from latentprobe.models import create_model


def _model(**options):
    torch.manual_seed(0)
    return create_model("deep_conv_ae", **{"latent_dim": 32, "width": 4, **options})


def test_the_latent_is_the_spatial_map_pooled_to_quadrants():
    model = _model().eval()
    images = torch.randn(3, 3, 32, 32)
    feature_map = model.encode_map(images)
    assert feature_map.shape == (3, 8, 8, 8)  # latent_dim 32 = 8 channels × 4 quadrants, at 8×8
    top_left = feature_map[:, :, :4, :4].mean(dim=(2, 3))
    latent = model.encode(images).view(3, 8, 4)  # channel-major: (C, 2, 2) flattened
    assert torch.allclose(latent[:, :, 0], top_left, atol=1e-6)
    assert [o.shape[1] for o in model.stage_outputs(images)] == [16, 32, 64, 32]
    assert torch.equal(model.stage_outputs(images)[-1], model.encode(images))


def test_training_masks_patches_and_scores_only_them():
    model = _model(mask_ratio=0.5, augment_crops=False).train()
    images = torch.randn(64, 3, 32, 32)
    torch.manual_seed(1)
    masked, mask = model._masked(images)
    assert abs(mask.mean().item() - 0.5) < 0.05 and torch.all(masked[mask.expand_as(images) > 0] == 0)
    assert torch.equal(mask, mask[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))  # 4×4 squares
    torch.manual_seed(1)
    loss, reconstruction = model.loss(images)
    expected = ((reconstruction - images).pow(2) * mask).sum() / (mask.sum() * 3)
    assert torch.allclose(loss, expected)
    model.eval()  # evaluation sees the clean image: plain MSE
    loss, reconstruction = model.loss(images)
    assert torch.allclose(loss, (reconstruction - images).pow(2).mean())


@pytest.mark.parametrize("options, message", [
    ({"latent_dim": 30}, "multiple of 4"),
    ({"mask_ratio": 1.0}, "mask_ratio < 1"),
    ({"image_size": 20}, "multiple of 8"),
])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("deep_conv_ae", **options)
