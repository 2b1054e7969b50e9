"""Input reconstruction: a decoder learns to rebuild the image from a task's released features.

Scored on held-out images by SSIM (a uniform window that fits small images; torchmetrics ignores
``kernel_size`` unless ``gaussian_kernel=False``) and PSNR. Knowing a task's label alone already tells
what a typical image looks like, so the same decoder trained on the one-hot label gives the floor that
a private feature should not beat by much.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as nnf
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .budget import epochs_within

DECODER_BATCH = 128


class Decoder(nn.Module):
    def __init__(self, in_features: int, image_shape: tuple[int, int, int], hidden: int = 512):
        super().__init__()
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(image_shape)),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(1)).view(-1, *self.image_shape)


def train_decoder(
    inputs: torch.Tensor,
    images: torch.Tensor,
    epochs: int,
    seed: int,
    batch_size: int = DECODER_BATCH,
    lr: float = 1e-3,
    max_steps: int | None = None,
) -> Decoder:
    torch.manual_seed(seed)
    decoder = Decoder(math.prod(inputs.shape[1:]), tuple(images.shape[1:]))
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    n = inputs.shape[0]
    for _ in range(epochs_within(n, batch_size, epochs, max_steps)):
        for idx in torch.randperm(n).split(batch_size):
            loss = nnf.mse_loss(decoder(inputs[idx]), images[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return decoder


def image_scores(reconstructed: torch.Tensor, images: torch.Tensor, ssim_kernel: int) -> dict[str, float]:
    """Mean SSIM (uniform ``ssim_kernel`` window) and PSNR of reconstructions in [0, 1]."""
    side = min(images.shape[-2:])
    if ssim_kernel > side:
        raise ValueError(f"audit.ssim_kernel={ssim_kernel} is wider than the images ({side} px): lower it")
    ssim = structural_similarity_index_measure(
        reconstructed, images, gaussian_kernel=False, kernel_size=ssim_kernel, data_range=1.0
    )
    psnr = peak_signal_noise_ratio(reconstructed, images, data_range=1.0)
    return {"ssim": float(ssim), "psnr": float(psnr)}


def reconstruction_attack(
    attacker_inputs: torch.Tensor,
    attacker_images: torch.Tensor,
    eval_inputs: torch.Tensor,
    eval_images: torch.Tensor,
    epochs: int,
    ssim_kernel: int,
    seed: int = 0,
    max_steps: int | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """Train on the attacker's (features, images); return held-out scores and the reconstructions."""
    decoder = train_decoder(attacker_inputs, attacker_images, epochs, seed, max_steps=max_steps)
    with torch.no_grad():
        recon = decoder(eval_inputs)
    return image_scores(recon, eval_images, ssim_kernel), recon


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return nnf.one_hot(labels, num_classes).float()
