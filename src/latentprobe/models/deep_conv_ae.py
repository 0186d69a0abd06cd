"""A deep convolutional autoencoder with a spatial latent, trained to inpaint rather than copy.

Encoder: a 3×3 stem, then three stages of two 3×3 Conv → BatchNorm → ReLU blocks at 32×32, 16×16
and 8×8 (widths w, 2w, 4w; a stride-2 convolution enters each lower stage), then a 1×1
convolution to the latent map of C = latent_dim / 4 channels at 8×8. The decoder mirrors it
with nearest-neighbour upsampling and ends in a 3×3 convolution to the image.

What forces it to understand rather than copy (the masked-image idea of the second write-up,
with a convolutional network): in training, ``mask_ratio`` of the 4×4 pixel patches of its input
are blanked (set to the data mean, 0 after normalisation), Gaussian noise of ``noise`` may be
added, and the batch is randomly cropped (reflect-padded by 4) and flipped on its device; the loss
is the MSE of the reconstruction on the blanked patches (on every pixel when nothing is masked),
against the clean, augmented image. Evaluation and the latents the probes read see clean images.

The probed latent is the 8×8×C map average-pooled over the four 4×4 quadrants: C·4 = latent_dim
values. Pooling keeps where things are only coarsely, as the patch autoencoder and the 2011
single-layer pipeline do, so the two families are probed alike; the flattened map (64·C values)
would let a linear probe lean on exact positions and is 16 times larger.

``stage_outputs(images)`` returns every stage's map, pooled the same way, for layer-wise probes.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.data.cifar import augment
from latentprobe.models import register_model

PATCH = 4  # side of the masked squares, pixels


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _quadrants(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, C·4): the mean of each 2×2 quadrant of the map."""
    return F.adaptive_avg_pool2d(feature_map, 2).flatten(1)


class DeepConvAutoencoder(nn.Module):
    def __init__(self, *, latent_dim: int = 512, width: int = 32, image_size: int = 32, mask_ratio: float = 0.5,
                 noise: float = 0.0, augment_crops: bool = True):
        super().__init__()
        if width < 1 or latent_dim < 4:
            raise ValueError(f"width (at least 1) and latent_dim (at least 4) are sizes; got {width}, {latent_dim}")
        if latent_dim % 4:
            raise ValueError(f"latent_dim is 4 quadrants × channels: it must be a multiple of 4, got {latent_dim}")
        if image_size % 8 or image_size < 16:
            raise ValueError(f"image_size must be a multiple of 8 and at least 16, got {image_size}")
        if not 0.0 <= mask_ratio < 1.0 or not noise >= 0.0 or width < 1:
            raise ValueError(f"need 0 <= mask_ratio < 1, noise >= 0 and width >= 1; got {mask_ratio}, {noise}, {width}")
        self.latent_dim, self.mask_ratio, self.noise, self.augment_crops = latent_dim, mask_ratio, noise, augment_crops
        self.config = dict(latent_dim=latent_dim, width=width, image_size=image_size, mask_ratio=mask_ratio,
                           noise=noise, augment_crops=augment_crops)
        w, channels = width, latent_dim // 4
        self.stages = nn.ModuleList([
            nn.Sequential(_block(3, w), _block(w, w)),  # (B, w, 32, 32)
            nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w)),  # (B, 2w, 16, 16)
            nn.Sequential(_block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w)),  # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, channels, 1),  # (B, C, 8, 8): the latent map
        ])
        self.decoder = nn.Sequential(
            _block(channels, 4 * w), _block(4 * w, 4 * w),  # (B, 4w, 8, 8)
            nn.Upsample(scale_factor=2), _block(4 * w, 2 * w), _block(2 * w, 2 * w),  # (B, 2w, 16, 16)
            nn.Upsample(scale_factor=2), _block(2 * w, w), _block(w, w),  # (B, w, 32, 32)
            nn.Conv2d(w, 3, 3, padding=1),  # (B, 3, 32, 32)
        )

    def encode_map(self, images: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            images = stage(images)
        return images

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return _quadrants(self.encode_map(images))

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output, quadrant-pooled: (B, w·4), (B, 2w·4), (B, 4w·4), (B, latent_dim)."""
        outputs = []
        for stage in self.stages:
            images = stage(images)
            outputs.append(_quadrants(images))
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode_map(images))

    def _masked(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blank ``mask_ratio`` of the 4×4 patches: the input, and the (B, 1, H, W) mask of blanked pixels."""
        b, _, h, w = images.shape
        hidden = torch.rand(b, 1, h // PATCH, w // PATCH, device=images.device) < self.mask_ratio
        mask = hidden.repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3).to(images.dtype)
        return images * (1 - mask), mask

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            reconstruction = self(images)
            return F.mse_loss(reconstruction.float(), images.float()), reconstruction
        if self.augment_crops:
            images = augment(images)
        inputs, mask = self._masked(images) if self.mask_ratio else (images, torch.ones_like(images[:, :1]))
        if self.noise:
            inputs = inputs + self.noise * torch.randn_like(inputs)
        reconstruction = self(inputs)
        squared = (reconstruction.float() - images.float()).pow(2) * mask  # (B, 3, H, W)
        return squared.sum() / (mask.sum() * images.shape[1]).clamp(min=1), reconstruction

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.mask_ratio:
            return {"reconstruction": self(images)}
        inputs, _ = self._masked(images)
        return {"masked": inputs, "reconstruction": self(inputs)}


@register_model
def deep_conv_ae(**kwargs) -> DeepConvAutoencoder:
    """Deep conv autoencoder, spatial 8×8 latent pooled to quadrants (latent_dim = 4 × channels), masked patches."""
    return DeepConvAutoencoder(**kwargs)
