"""An encoder of your own, as latentprobe reads it: a factory that returns an nn.Module.

    latentprobe evaluate --encoder examples/my_encoder.py:build --dataset imagefolder --data-dir DIR OUT

The module gets normalised image batches (B, 3, 32, 32) and returns its latent (B, D) from
``encode`` (or from ``forward`` when it has no ``encode``). Give trained weights with
``--weights FILE`` (a state dict); without them the factory's own initialisation is probed.
"""

from torch import nn


class SmallEncoder(nn.Module):
    """Three stride-2 convolutions and a 2 × 2 average pool: a 256-d latent."""

    image_size = 32  # the input side it expects; images are resized and centre-cropped to it

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def encode(self, images):
        return self.features(images)

    def forward(self, images):
        return self.encode(images)


def build() -> nn.Module:
    return SmallEncoder()
