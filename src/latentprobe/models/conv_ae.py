"""The convolutional autoencoder of the first study (seeds/000).

Encoder, as the write-up draws it:
    Conv2d(3→c1, k3) → ReLU → MaxPool(2) → ReLU → Conv2d(c1→c2, k3) → Linear(→latent)
The decoder mirrors it: Linear → ConvTranspose2d(c2→c1, k3) → ReLU → Upsample(2) → ReLU →
ConvTranspose2d(c1→3, k3). Convolutions are unpadded (PyTorch's default, which the write-up
does not change), so a 32×32 image goes 32 → 30 → 15 → 13.

``noise`` > 0 makes it a denoising autoencoder (Vincent et al., 2008): in training, the encoder
reads the normalised image plus Gaussian noise of that standard deviation and the loss asks for
the clean image back. Evaluation, reconstructions and the latents the probes read are clean.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.models import register_model


class ConvAutoencoder(nn.Module):
    def __init__(self, *, latent_dim: int = 256, c1: int = 16, c2: int = 32, image_size: int = 32,
                 noise: float = 0.0):
        super().__init__()
        if image_size < 12 or (image_size - 2) % 2:
            raise ValueError(f"image_size must be even and at least 12, got {image_size}")
        if min(latent_dim, c1, c2) < 1:
            raise ValueError(f"latent_dim, c1 and c2 are sizes, each at least 1; got {latent_dim}, {c1}, {c2}")
        if not noise >= 0:
            raise ValueError(f"noise is a standard deviation and must be >= 0, got {noise}")
        self.latent_dim, self.noise = latent_dim, noise
        self.config = dict(latent_dim=latent_dim, c1=c1, c2=c2, image_size=image_size, noise=noise)
        side = (image_size - 2) // 2 - 2  # 32 → 13
        self.feature_shape = (c2, side, side)
        flat = c2 * side * side

        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=3),  # (B, c1, 30, 30)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, c1, 15, 15)
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=3),  # (B, c2, 13, 13)
            nn.Flatten(),
            nn.Linear(flat, latent_dim),  # (B, latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat),
            nn.Unflatten(1, self.feature_shape),  # (B, c2, 13, 13)
            nn.ConvTranspose2d(c2, c1, kernel_size=3),  # (B, c1, 15, 15)
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2),  # (B, c1, 30, 30)
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, 3, kernel_size=3),  # (B, 3, 32, 32)
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = images + self.noise * torch.randn_like(images) if self.training and self.noise else images
        reconstruction = self(inputs)
        return F.mse_loss(reconstruction.float(), images.float()), reconstruction

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self(images)}


@register_model
def conv_ae(**kwargs) -> ConvAutoencoder:
    """The study's autoencoder; ``latent_dim`` (16…512), ``c1``, ``c2``, ``noise`` (denoising) configurable."""
    return ConvAutoencoder(**kwargs)
