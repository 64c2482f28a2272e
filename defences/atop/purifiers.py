"""AToP's purifiers g(x_t, m): a GAN inpainting generator with its discriminator, and a masked denoising AE.

Both take the masked (possibly noisy) image x_t (B, C, H, W) and its keep mask m (B, 1, H, W) and return a
full image in [0, 1]; both are sized by the image shape and channels of the scenario.

- `InpaintingGenerator`: a DeepFill-v2-style generator (Yu et al. 2019, the GAN purifier of Ughini et al.
  2022): gated convolutions with ELU, two stride-2 downsamplings, dilated gated convolutions at the
  bottleneck, nearest upsampling back; an optional second (refinement) stage that sees the first stage's
  output pasted into the holes. Width 48 and two stages are DeepFill v2's sizes; its contextual-attention
  branch is left out. A "compact" layout (one convolution per resolution) is the scaled setting for small
  images on a CPU.
- `PatchDiscriminator`: SN-PatchGAN (spectral-normalised stride-2 5x5 convolutions, LeakyReLU 0.2) scoring
  every patch of an image.
- `MaskedAutoencoder`: a ViT masked denoising autoencoder (Wu et al. 2023, DMAE): patch tokens whose mask
  patch is missing are dropped from the encoder's attention (MAE), a lighter decoder sees learned mask
  tokens in their place and predicts every patch's pixels. ViT-Base sizes (768 / 12 layers / 12 heads,
  decoder 512 / 8 / 16) are the defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from defences.memory import run_layers


def _check_image(x_t: torch.Tensor, mask: torch.Tensor, channels: int) -> None:
    if x_t.dim() != 4 or x_t.shape[1] != channels:
        raise ValueError(f"purifier expects images (B, {channels}, H, W), got shape {tuple(x_t.shape)}")
    if mask.shape != (x_t.shape[0], 1, *x_t.shape[2:]):
        raise ValueError(f"mask must have shape (B, 1, H, W) = {(x_t.shape[0], 1, *x_t.shape[2:])}, "
                         f"got {tuple(mask.shape)}")


class GatedConv2d(nn.Module):
    """A gated convolution (Yu et al. 2019): ELU(features) * sigmoid(gate), both from one convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


def bottleneck_dilations(height: int, width: int, downsamplings: int = 2, largest: int = 16) -> list[int]:
    """Dilations 2, 4, ... up to `largest` that still fit inside the bottleneck feature map."""
    side = min(height, width) // (2 ** downsamplings)
    dilations, d = [], 2
    while d <= largest and d < max(side, 2):
        dilations.append(d)
        d *= 2
    return dilations or [1]


LAYOUTS = ("deepfill", "compact")


class InpaintingStage(nn.Module):
    """One encoder-dilated-decoder pass of gated convolutions from (image, mask) to an image in [0, 1].

    "deepfill": DeepFill v2's coarse network (17 convolutions: 6 encoder, the dilated ones, 2 more, 5 decoder).
    "compact": the same shape with one convolution per resolution and no extra bottleneck convolutions
    (about half the layers), a scaled setting for small images on a CPU.
    """

    def __init__(self, channels: int, width: int, dilations: list[int], layout: str = "deepfill"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"generator_layout={layout!r} is not valid; valid: {', '.join(LAYOUTS)}")
        c, full = width, layout == "deepfill"
        self.encoder = nn.Sequential(
            GatedConv2d(channels + 1, c, 5), GatedConv2d(c, 2 * c, 3, stride=2),
            *([GatedConv2d(2 * c, 2 * c)] if full else []), GatedConv2d(2 * c, 4 * c, 3, stride=2),
            *([GatedConv2d(4 * c, 4 * c), GatedConv2d(4 * c, 4 * c)] if full else []))
        self.middle = nn.Sequential(*[GatedConv2d(4 * c, 4 * c, 3, dilation=d) for d in dilations],
                                    *([GatedConv2d(4 * c, 4 * c), GatedConv2d(4 * c, 4 * c)] if full else []))
        self.up_middle = nn.Sequential(GatedConv2d(4 * c, 2 * c), *([GatedConv2d(2 * c, 2 * c)] if full else []))
        last = max(c // 2, 1) if full else c
        self.up_full = nn.Sequential(GatedConv2d(2 * c, c), *([GatedConv2d(c, last)] if full else []))
        self.to_image = nn.Conv2d(last, channels, 3, padding=1)
        self.checkpointed = False  # gradient checkpointing per gated convolution (set_checkpointing)

    def forward(self, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = x_t.shape[-2:]
        h = run_layers([*self.encoder, *self.middle], torch.cat([x_t, mask], dim=1), self.checkpointed)
        h = run_layers(self.up_middle, F.interpolate(h, size=((height + 1) // 2, (width + 1) // 2), mode="nearest"),
                       self.checkpointed)
        h = run_layers(self.up_full, F.interpolate(h, size=(height, width), mode="nearest"), self.checkpointed)
        return torch.sigmoid(self.to_image(h))


class InpaintingGenerator(nn.Module):
    """DeepFill-v2-style coarse (+ refinement) inpainting generator; returns the last stage's full image."""

    def __init__(self, channels: int, height: int, width: int, base_width: int = 48, stages: int = 2,
                 layout: str = "deepfill"):
        super().__init__()
        if stages not in (1, 2):
            raise ValueError(f"generator_stages must be 1 or 2, got {stages}")
        if base_width < 1:
            raise ValueError(f"generator_width must be >= 1, got {base_width}")
        self.channels = channels
        dilations = bottleneck_dilations(height, width)
        self.stages = nn.ModuleList([InpaintingStage(channels, base_width, dilations, layout) for _ in range(stages)])

    def forward(self, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_image(x_t, mask, self.channels)
        out = self.stages[0](x_t, mask)
        for stage in self.stages[1:]:
            out = stage(mask * x_t + (1 - mask) * out, mask)
        return out


def set_checkpointing(purifier: nn.Module, enabled: bool) -> None:
    """Gradient checkpointing on or off in every part of a purifier that supports it."""
    for module in purifier.modules():
        if hasattr(module, "checkpointed"):
            module.checkpointed = enabled


class PatchDiscriminator(nn.Module):
    """SN-PatchGAN: a map of real/fake scores, one per receptive-field patch of the image."""

    def __init__(self, channels: int, height: int, width: int, base_width: int = 64, max_layers: int = 6):
        super().__init__()
        layers_count = max(1, min(max_layers, int(math.log2(min(height, width))) - 1))
        widths = [min(base_width * 2 ** i, 4 * base_width) for i in range(layers_count)]
        layers: list[nn.Module] = []
        previous = channels
        for i, out in enumerate(widths):
            layers.append(spectral_norm(nn.Conv2d(previous, out, 5, stride=2, padding=2)))
            if i < layers_count - 1:
                layers.append(nn.LeakyReLU(0.2))
            previous = out
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class MaskedAutoencoder(nn.Module):
    """ViT masked denoising autoencoder: encoder on the visible patch tokens, decoder predicts all pixels."""

    def __init__(self, channels: int, height: int, width: int, patch_size: int, dim: int = 768, depth: int = 12,
                 heads: int = 12, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16):
        super().__init__()
        if height % patch_size or width % patch_size:
            raise ValueError(f"ae_patch_size {patch_size} must divide the image size {height}x{width}")
        for name, size, n_heads in (("ae_dim", dim, heads), ("ae_decoder_dim", decoder_dim, decoder_heads)):
            if size % n_heads:
                raise ValueError(f"{name}={size} must be divisible by its number of heads {n_heads}")
        self.channels, self.patch = channels, patch_size
        self.grid = (height // patch_size, width // patch_size)
        tokens, patch_pixels = self.grid[0] * self.grid[1], channels * patch_size ** 2
        self.embed = nn.Linear(patch_pixels, dim)
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True), depth, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(dim)
        self.to_decoder = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_position = nn.Parameter(torch.zeros(1, tokens, decoder_dim))
        self.decoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(decoder_dim, decoder_heads, 4 * decoder_dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True), decoder_depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.to_pixels = nn.Linear(decoder_dim, patch_pixels)
        for parameter in (self.position, self.mask_token, self.decoder_position):
            nn.init.normal_(parameter, std=0.02)
        self.checkpointed = False  # gradient checkpointing per transformer layer (set_checkpointing)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = images.shape
        p, (rows, cols) = self.patch, self.grid
        return images.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        p, (rows, cols), c = self.patch, self.grid, self.channels
        return tokens.reshape(b, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * p, cols * p)

    def forward(self, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_image(x_t, mask, self.channels)
        # a token is visible when most of its pixels are kept (mask patches align with tokens by default)
        visible = self.patchify(mask).mean(dim=2) > 0.5
        hidden = self.embed(self.patchify(x_t)) + self.position
        # a fully masked example would leave attention with nothing to attend to: let it see every token
        padding = ~(visible | ~visible.any(1, keepdim=True))
        if self.checkpointed and torch.is_grad_enabled():
            hidden = run_layers(self.encoder.layers, hidden, True, src_key_padding_mask=padding)
        else:
            hidden = self.encoder(hidden, src_key_padding_mask=padding)
        hidden = self.to_decoder(self.encoder_norm(hidden))
        hidden = torch.where(visible.unsqueeze(2), hidden, self.mask_token.to(hidden.dtype))
        hidden = hidden + self.decoder_position
        decoded = run_layers(self.decoder.layers, hidden, True) if self.checkpointed and torch.is_grad_enabled() \
            else self.decoder(hidden)
        hidden = self.decoder_norm(decoded)
        return torch.sigmoid(self.unpatchify(self.to_pixels(hidden)))
