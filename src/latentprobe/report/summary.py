"""``latentprobe summary MODEL``: layers, output shapes, parameters and MACs of any model.

The summary is torchinfo's, over the model's own ``forward`` on a random batch: for a masked
autoencoder that is one pretraining step (encoder on the visible patches, then the decoder).
torchinfo's own mult-add column counts a Linear once per sample, not once per token, which
undercounts a ViT by the number of tokens; so MACs come from ``torch.utils.flop_counter``
(matmuls, convolutions and ``F.scaled_dot_product_attention``; FLOPs / 2).
"""

import torch

from latentprobe.models import check_model, create_model


def model_summary(name: str, model_args: dict | None = None, *, batch_size: int = 1, depth: int = 3,
                  image_size: int = 32) -> str:
    """torchinfo's table for ``create_model(name, **model_args)`` on (batch_size, 3, S, S) images."""
    from torchinfo import summary

    check_model(name, **(model_args or {}))  # a bad or too-large option: one line before anything is built
    torch.manual_seed(0)  # masks are random: the same table every call
    model = create_model(name, **(model_args or {})).eval()
    images = torch.randn(batch_size, 3, image_size, image_size)
    stats = summary(model, input_data=[images], depth=depth, verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), row_settings=("var_names",))
    forward_macs = count_macs(model, images)
    torch.manual_seed(0)
    encode_macs = count_macs(model.encode, images)
    return (f"{name}  {model_args or {}}\n{stats}\n"
            f"MACs per image: forward (training step) {forward_macs / batch_size / 1e6:.2f} M, "
            f"encode (all patches) {encode_macs / batch_size / 1e6:.2f} M (torch flop counter; "
            f"torchinfo's total above counts a Linear once per sample, not per token)\n"
            f"latent: {model.latent_dim} values per image (model.encode)")


@torch.no_grad()
def count_macs(fn, images: torch.Tensor) -> float:
    """Multiply-accumulates of ``fn(images)``, whole batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(images)
    return counter.get_total_flops() / 2
