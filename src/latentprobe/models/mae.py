"""A ViT masked autoencoder (MAE) sized for 32×32 images.

The image is cut into p×p patches (L = (H/p)·(W/p) of them). During pretraining a random
``mask_ratio`` of the patches is hidden; the encoder sees only the visible ones (plus a CLS
token), and a light decoder, given the encoded visible tokens and a learned mask token at every
hidden position, predicts the pixels of all patches. The loss is the mean squared error on the
hidden patches only. Position embeddings are fixed 2-D sin-cos tables.

For probing, ``encode`` runs the encoder on all patches, no masking, and pools the normed tokens
(the CLS token, or the mean of the patch tokens). Transformer blocks come from timm's public
``Block``; their attention goes through ``F.scaled_dot_product_attention``.
"""

from functools import partial

import torch
import torch.nn as nn

from latentprobe.models import register_model

POOLS = ("cls", "mean")


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table, (1 + grid_size², embed_dim); row 0 (CLS) is zeros.

    A quarter of the channels hold sin(x·ω), a quarter cos(x·ω), then the same for y, with
    frequencies ω = 10000^(-k / (embed_dim/4)), k = 0 … embed_dim/4 - 1.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need an embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each, row-major
    angles_x = grid_x.reshape(-1, 1) * omega  # (L, D/4)
    angles_y = grid_y.reshape(-1, 1) * omega
    table = torch.cat([angles_x.sin(), angles_x.cos(), angles_y.sin(), angles_y.cos()], dim=1)
    table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)  # (1, 1+L, D)


def check_mask_ratio(mask_ratio: float) -> float:
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio}")
    return float(mask_ratio)


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hide a random ``mask_ratio`` of the L tokens of every sample, independently per sample.

    tokens: (B, L, D). Keeps round(L·(1-mask_ratio)) tokens (at least 1, at most L-1) chosen by
    sorting uniform noise. Returns the kept tokens (B, L_keep, D), the mask (B, L) with
    1 = hidden, 0 = visible, in the original patch order, and ids_restore (B, L): gathering the
    shuffled sequence [kept, hidden] with ids_restore puts every token back at its patch index.
    """
    check_mask_ratio(mask_ratio)
    batch, length, dim = tokens.shape
    num_keep = min(max(round(length * (1.0 - mask_ratio)), 1), length - 1)
    noise = torch.rand(batch, length, device=tokens.device, generator=generator)  # (B, L)
    ids_shuffle = noise.argsort(dim=1)  # patch indices, kept ones first
    ids_restore = ids_shuffle.argsort(dim=1)  # position of each patch in the shuffled order
    ids_keep = ids_shuffle[:, :num_keep]  # (B, L_keep)
    kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, L_keep, D)
    mask = (ids_restore >= num_keep).float()  # (B, L), 1 = hidden; float32 even under autocast
    return kept, mask, ids_restore


class MaskedAutoencoderViT(nn.Module):
    def __init__(
        self,
        *,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        decoder_embed_dim: int = 128,
        decoder_depth: int = 4,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        drop_path_rate: float = 0.0,
        pool: str = "cls",
    ):
        super().__init__()
        if patch_size < 1 or img_size % patch_size:
            divisors = ", ".join(str(d) for d in range(2, img_size) if img_size % d == 0)
            raise ValueError(
                f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                f"use a patch_size that divides {img_size} (one of: {divisors})"
            )
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        check_mask_ratio(mask_ratio)
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
            drop_path_rate=drop_path_rate, pool=pool,
        )  # fmt: skip
        self.latent_dim = embed_dim
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.depth, self.mask_ratio = depth, mask_ratio
        self.norm_pix_loss, self.pool = norm_pix_loss, pool
        grid_size = img_size // patch_size
        self.num_patches = grid_size * grid_size
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        from timm.models.vision_transformer import Block  # here: timm costs seconds to import, and conv studies skip it

        # ---- encoder: patches → tokens, CLS, fixed positions, blocks
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid_size), persistent=False)
        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth per block
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=norm_layer)
            for rate in drop_path
        )
        self.norm = norm_layer(embed_dim)

        # ---- decoder: narrower tokens, a learned mask token at hidden positions, pixel head
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        decoder_pos_embed = sincos_pos_embed_2d(decoder_embed_dim, grid_size)  # (1, 1+L, Dd)
        self.register_buffer("decoder_pos_embed", decoder_pos_embed, persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)

        for block in [*self.blocks, *self.decoder_blocks]:
            block.attn.fused_attn = True  # always go through F.scaled_dot_product_attention
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # The patch embedding is a Linear on flattened patches: xavier on its (D, C·p·p) view.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ---- patches ↔ images

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, L, p·p·C), patches in row-major order, pixels as (p, p, C)."""
        batch, chans, height, width = imgs.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch_size {p}; "
                f"resize the images or build the model with a patch_size that divides both sides"
            )
        h, w = height // p, width // p
        x = imgs.reshape(batch, chans, h, p, w, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(batch, h * w, p * p * chans)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p·p·C) → (B, C, H, W); the exact inverse of ``patchify`` for square images."""
        batch, length, _ = x.shape
        p, chans = self.patch_size, self.in_chans
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"unpatchify expects a square grid of patches, got {length} patches")
        x = x.reshape(batch, side, side, p, p, chans)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(batch, chans, side * p, side * p)

    # ---- encoder / decoder / loss

    def _check_image_size(self, imgs: torch.Tensor) -> None:
        if imgs.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected {self.img_size}x{self.img_size} images, got {tuple(imgs.shape[-2:])}; "
                f"build the model with img_size matching the data (and a patch_size dividing it)"
            )

    def _embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        self._check_image_size(imgs)
        tokens = self.patch_embed(imgs).flatten(2).transpose(1, 2)  # (B, L, D)
        return tokens + self.pos_embed[:, 1:]

    def _with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, tokens], dim=1)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: latent (B, 1+L_keep, D), mask (B, L), ids_restore (B, L)."""
        tokens, mask, ids_restore = random_masking(self._embed_patches(imgs), mask_ratio, generator)
        x = self._with_cls(tokens)  # (B, 1+L_keep, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the encoded visible tokens: (B, 1+L_keep, D) → (B, L, p·p·C)."""
        x = self.decoder_embed(latent)  # (B, 1+L_keep, Dd)
        batch, num_tokens, dim = x.shape
        num_hidden = ids_restore.shape[1] + 1 - num_tokens
        # Shuffled order is [kept, hidden]: append mask tokens, then gather back to patch order.
        shuffled = torch.cat([x[:, 1:], self.mask_token.expand(batch, num_hidden, -1)], dim=1)  # (B, L, Dd)
        patches = shuffled.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1+L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x[:, 1:]))  # (B, L, p·p·C), CLS dropped

    def _patch_stats(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch mean and std of the target pixels, (B, L, 1) each (std as in the loss)."""
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        return mean, (var + 1e-6).sqrt()

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on hidden patches only: per-patch mean over pixels, averaged with ``mask`` weights."""
        target = self.patchify(imgs)  # (B, L, p·p·C)
        if self.norm_pix_loss:
            mean, std = self._patch_stats(target)
            target = (target - mean) / std
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pretraining step: (loss, pred (B, L, p·p·C), mask (B, L) with 1 = hidden)."""
        mask_ratio = self.mask_ratio if mask_ratio is None else check_mask_ratio(mask_ratio)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # ---- toolkit protocol

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens, no masking, after the final norm: (B, 1+L, D), CLS first."""
        x = self._with_cls(self._embed_patches(images))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def encode(self, images: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        """(B, latent_dim): the CLS token, or the mean of the patch tokens (``pool="mean"``)."""
        pool = self.pool if pool is None else pool
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        tokens = self.forward_features(images)
        return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """After each block, through the final norm, pooled as ``encode``: (B, D) per block (layer-wise probes)."""
        x, outputs = self._with_cls(self._embed_patches(images)), []
        for block in self.blocks:
            x = block(x)
            tokens = self.norm(x)
            outputs.append(tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1))
        return outputs

    def _pixels(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predictions in pixel space: undo norm_pix_loss with each patch's own target stats."""
        if not self.norm_pix_loss:
            return pred
        mean, std = self._patch_stats(self.patchify(imgs))
        return pred * std + mean

    def _paste_visible(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) with visible patches from the input and hidden ones from ``pred``."""
        hidden = mask.unsqueeze(-1).to(pred.dtype)  # (B, L, 1)
        patches = self.patchify(imgs) * (1 - hidden) + self._pixels(imgs, pred) * hidden
        return self.unpatchify(patches)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, pred, mask = self(images)
        with torch.no_grad():
            reconstruction = self._paste_visible(images, pred.detach(), mask)
        return loss, reconstruction

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        _, pred, mask = self(images, generator=generator)
        visible = 1 - mask.unsqueeze(-1).to(images.dtype)  # (B, L, 1)
        return {
            "masked": self.unpatchify(self.patchify(images) * visible),
            "reconstruction": self._paste_visible(images, pred, mask),
            "prediction": self.unpatchify(self._pixels(images, pred)),
        }

    # ---- helpers for fine-tuning

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 embeddings, i+1 for blocks.i, depth+1 after."""
        if param_name.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return self.depth + 1


# ---- presets: the study's ViT-Tiny (D=192, 12 blocks, 3 heads) and a CPU-sized micro model.
# The decoder is light on purpose: 4 blocks of width 128 with 4 heads (head dim 32).


@register_model
def mae_vit_tiny_patch4(**kwargs) -> MaskedAutoencoderViT:
    """ViT-Tiny MAE, patch 4 (64 patches): encoder 192×12 blocks, 3 heads; decoder 128×4, 4 heads."""
    config = dict(patch_size=4, embed_dim=192, depth=12, num_heads=3,
                  decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)  # fmt: skip
    return MaskedAutoencoderViT(**{**config, **kwargs})


@register_model
def mae_vit_tiny_patch2(**kwargs) -> MaskedAutoencoderViT:
    """ViT-Tiny MAE, patch 2 (256 patches): same widths as ``mae_vit_tiny_patch4``."""
    return mae_vit_tiny_patch4(**{"patch_size": 2, **kwargs})


@register_model
def mae_vit_micro_patch4(**kwargs) -> MaskedAutoencoderViT:
    """MAE that trains in minutes on a 2-core CPU: encoder 128×4 blocks, 4 heads; decoder 96×2, 4 heads."""
    config = dict(patch_size=4, embed_dim=128, depth=4, num_heads=4,
                  decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4)  # fmt: skip
    return MaskedAutoencoderViT(**{**config, **kwargs})
