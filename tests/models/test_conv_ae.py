import pytest
import torch
import torch.nn.functional as F

from latentprobe.models import create_model, list_models
from latentprobe.models.conv_ae import ConvAutoencoder


@pytest.mark.parametrize("latent_dim", [16, 32, 64, 128, 256, 512])
def test_shapes_for_every_latent_size(latent_dim):
    model = create_model("conv_ae", latent_dim=latent_dim)
    images = torch.randn(3, 3, 32, 32)
    assert model.encode(images).shape == (3, latent_dim)
    loss, reconstruction = model.loss(images)
    assert reconstruction.shape == images.shape and loss.ndim == 0
    assert model.reconstruct(images)["reconstruction"].shape == images.shape


def test_channels_are_configurable():
    model = create_model("conv_ae", latent_dim=8, c1=4, c2=6)
    assert model.encoder[0].out_channels == 4 and model.encoder[4].out_channels == 6


def test_every_registered_model_follows_the_protocol():
    for name in list_models():
        model = create_model(name).eval()
        with torch.no_grad():
            latent = model.encode(torch.randn(2, 3, 32, 32))
            loss, reconstruction = model.loss(torch.randn(2, 3, 32, 32))
        assert latent.shape == (2, model.latent_dim), name
        assert reconstruction.shape == (2, 3, 32, 32) and torch.isfinite(loss), name
        assert isinstance(model.config, dict) and create_model(name, **model.config).latent_dim == model.latent_dim


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'nope'.*conv_ae"):
        create_model("nope")


def test_denoising_corrupts_only_the_training_input():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    plain = ConvAutoencoder(latent_dim=16, c1=4, c2=8)
    noisy = ConvAutoencoder(latent_dim=16, c1=4, c2=8, noise=0.5)
    noisy.load_state_dict(plain.state_dict())
    clean_loss = F.mse_loss(plain(images), images)
    torch.testing.assert_close(plain.loss(images)[0], clean_loss)  # noise=0: the study's loss
    assert not torch.allclose(noisy.loss(images)[0], clean_loss)  # training: a noisy input ...
    torch.manual_seed(1)
    expected = F.mse_loss(plain(images + 0.5 * torch.randn_like(images)), images)  # ... clean target
    torch.manual_seed(1)
    torch.testing.assert_close(noisy.loss(images)[0], expected)
    noisy.eval()
    torch.testing.assert_close(noisy.loss(images)[0], clean_loss)  # evaluation reads clean images
    torch.testing.assert_close(noisy.encode(images), plain.encode(images))
    with pytest.raises(ValueError, match="noise is a standard deviation"):
        ConvAutoencoder(noise=-0.1)
