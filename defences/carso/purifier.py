"""CARSO's purifier: a conditional VAE over images, conditioned on the classifier's representation.

Architecture of the CARSO paper Appendix E (Tables 4-11, 13); every block is conv/linear without bias ->
BatchNorm (affine) -> LeakyReLU(0.2):
- input encoder (training only, Table 4): standardised image -> Conv(C->6, k3 s2 p1) -> Conv(6->12, k3 s2 p1);
- one representation encoder per captured layer (Tables 6/7): Conv k3 s1 p0 to ceil(c/2), ceil(c/4),
  ceil(c/8) [, ceil(c/16)] channels. A conv without padding shrinks the map by 2, so a layer whose map is too
  small for `depth` of them gets as many as fit (none below 3x3; e.g. ResNet-18's 4x4 last stage gets one),
  and a flat (B, F) output (a Linear layer of a small classifier) is used as it is;
- FC representation encoder (Table 8): flatten, concatenate -> Linear(fcrepr);
- joint encoder (Table 9): concat(input code, representation code) -> Linear(fjoint) -> two Linear(fjoint)
  heads (bias) for the mean and log-variance of z (latent size fjoint);
- decoder (Tables 10/11): concat(z, representation code) -> Linear(c0 * s * s, bias) -> LeakyReLU ->
  (c0, s, s) -> ConvTranspose k3 s2 p1 per entry of `decoder_channels[1:]` (+ BN + LeakyReLU) -> a last
  biased ConvTranspose to the image channels -> Sigmoid.
  `table10` (32x32 in the paper): s = H/2^k + 1, output_padding 0, last layer k2 s1 p1;
  `table11` (64x64 in the paper): s = H/2^k, output_padding 1, last layer k3 s1 p1 (k = upsampling layers).
  `auto` picks table11 for images of side >= 64, table10 otherwise. Any side divisible by 2^k works
  (28x28 MNIST with the 4 default layers does not: use `pad_to_32: true`, or 2 upsampling layers).
Nothing is sized for CIFAR: channels, spatial sizes and feature counts come from the task and the shapes
of the captured tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DECODER_STYLES = ("auto", "table10", "table11")
SLOPE = 0.2


def conv_block(c_in: int, c_out: int, **conv: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, bias=False, **conv), nn.BatchNorm2d(c_out), nn.LeakyReLU(SLOPE)]


def linear_block(f_in: int, f_out: int) -> list[nn.Module]:
    return [nn.Linear(f_in, f_out, bias=False), nn.BatchNorm1d(f_out), nn.LeakyReLU(SLOPE)]


def layer_encoder(shape: Sequence[int], depth: int) -> tuple[nn.Module, int]:
    """A per-layer compressor for a captured tensor of per-example `shape`, and its flat output size."""
    if len(shape) != 3:
        return nn.Flatten(), math.prod(shape)
    channels, height, width = shape
    n_convs = max(0, min(depth, (min(height, width) - 1) // 2))
    modules: list[nn.Module] = []
    c_in = channels
    for level in range(1, n_convs + 1):
        c_out = math.ceil(channels / 2**level)
        modules += conv_block(c_in, c_out, kernel_size=3, stride=1, padding=0)
        c_in = c_out
    modules.append(nn.Flatten())
    return nn.Sequential(*modules), c_in * (height - 2 * n_convs) * (width - 2 * n_convs)


@dataclass(frozen=True)
class DecoderGeometry:
    style: str
    start: tuple[int, int]
    output_padding: int
    last_kernel: int


def decoder_geometry(height: int, width: int, upsamplings: int, style: str = "auto") -> DecoderGeometry:
    if style not in DECODER_STYLES:
        raise ValueError(f"decoder_style={style!r} is not valid; valid: {', '.join(DECODER_STYLES)}")
    if style == "auto":
        style = "table11" if min(height, width) >= 64 else "table10"
    factor = 2**upsamplings
    if height % factor or width % factor:
        raise ValueError(
            f"the decoder upsamples by 2^{upsamplings} = {factor} ({upsamplings} transposed convolutions, from "
            f"decoder_channels), but the image is {height}x{width}, not a multiple of {factor}. For 28x28 MNIST "
            f"set dataset_options: {{pad_to_32: true}} in the scenario, or give decoder_channels with fewer "
            f"entries (e.g. 3 entries: 2 upsamplings)")
    if style == "table11":
        return DecoderGeometry(style, (height // factor, width // factor), output_padding=1, last_kernel=3)
    return DecoderGeometry(style, (height // factor + 1, width // factor + 1), output_padding=0, last_kernel=2)


class Decoder(nn.Module):
    """p(x | z, c): (z, representation code) -> image logits (the Sigmoid is applied by the caller)."""

    def __init__(self, in_features: int, image_shape: Sequence[int], channels: Sequence[int], style: str):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"decoder_channels needs at least 2 entries (start channels, then one per "
                             f"upsampling layer), got {list(channels)}")
        image_channels, height, width = image_shape
        self.geometry = decoder_geometry(height, width, len(channels) - 1, style)
        start_h, start_w = self.geometry.start
        self.start_shape = (channels[0], start_h, start_w)
        self.project = nn.Sequential(nn.Linear(in_features, math.prod(self.start_shape)), nn.LeakyReLU(SLOPE))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1,
                                          output_padding=self.geometry.output_padding, bias=False),
                       nn.BatchNorm2d(c_out), nn.LeakyReLU(SLOPE)]
        layers.append(nn.ConvTranspose2d(channels[-1], image_channels, kernel_size=self.geometry.last_kernel,
                                         stride=1, padding=1, bias=True))
        self.deconv = nn.Sequential(*layers)
        self.checkpointed = False  # gradient checkpointing of each upsampling block (CarsoParams)

    def forward(self, z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decode(z, self.code_term(code))

    def code_term(self, code: torch.Tensor) -> torch.Tensor:
        """The code's share of the first layer, W_code @ code + b: computed once per input, not once per z."""
        linear = self.project[0]
        return F.linear(code, linear.weight[:, linear.in_features - code.shape[1]:], linear.bias)

    def decode(self, z: torch.Tensor, code_term: torch.Tensor) -> torch.Tensor:
        """Image logits from z and its input's `code_term` (one row per z): Linear(concat(z, code)) split in two."""
        linear, activation = self.project
        hidden = activation(F.linear(z, linear.weight[:, :z.shape[1]]) + code_term).view(-1, *self.start_shape)
        if hidden.device.type == "cpu":  # CPU transposed convolutions run ~2x faster on channels-last tensors
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        layers = list(self.deconv)
        if not (self.checkpointed and torch.is_grad_enabled()):
            return _run_layers(layers, hidden).contiguous()
        # one checkpoint per upsampling block (transposed conv, BatchNorm, activation) and one for the last layer:
        # only the blocks' inputs are kept for the backward pass, each block recomputed there in turn
        for block in [layers[i:i + 3] for i in range(0, len(layers) - 1, 3)] + [layers[-1:]]:
            hidden = checkpoint(_recomputable(block), hidden, use_reentrant=False)
        return hidden.contiguous()


def _run_layers(layers: Sequence[nn.Module], hidden: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    for layer in layers:
        if recompute and isinstance(layer, nn.BatchNorm2d) and layer.training:
            # the recomputation normalises with the batch's statistics as the first pass did (the same call, so
            # the same tensors saved), but updates copies of the running statistics, which it drops: the first
            # pass already updated them once
            hidden = F.batch_norm(hidden, layer.running_mean.clone(), layer.running_var.clone(), layer.weight,
                                  layer.bias, True, layer.momentum or 0.1, layer.eps)
        elif _is_stride_one_transpose(layer):
            hidden = _stride_one_as_conv(layer, hidden)
        else:
            hidden = layer(hidden)
    return hidden


def _recomputable(layers: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layers as a function for torch.utils.checkpoint: the first call is the forward pass, later ones the
    recomputation in the backward pass."""
    calls = [0]

    def run(hidden: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return _run_layers(layers, hidden, recompute=calls[0] > 1)

    return run


def _is_stride_one_transpose(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.ConvTranspose2d) and layer.stride == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.output_padding == (0, 0)
            and all(k - 1 - p >= 0 for k, p in zip(layer.kernel_size, layer.padding, strict=True)))


def _stride_one_as_conv(layer: nn.ConvTranspose2d, hidden: torch.Tensor) -> torch.Tensor:
    """A stride-1 transposed convolution as the plain convolution it equals (flipped kernel, in/out swapped,
    padding k - 1 - p): the same result to float rounding, and CPU libraries run the plain one far faster."""
    padding = tuple(k - 1 - p for k, p in zip(layer.kernel_size, layer.padding, strict=True))
    return F.conv2d(hidden, layer.weight.flip(2, 3).transpose(0, 1), layer.bias, padding=padding)


class Purifier(nn.Module):
    """The conditional VAE. `reconstruct` is the inference path; `forward` the training path."""

    def __init__(self, image_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 representation_shapes: Sequence[Sequence[int]], *, fcrepr: int, fjoint: int, depth: int,
                 decoder_channels: Sequence[int], decoder_style: str = "auto",
                 input_channels: Sequence[int] = (6, 12)):
        super().__init__()
        image_channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.latent_size = fjoint
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        # --- training only ---------------------------------------------------------------------------------
        first, second = input_channels
        self.input_encoder = nn.Sequential(
            *conv_block(image_channels, first, kernel_size=3, stride=2, padding=1),
            *conv_block(first, second, kernel_size=3, stride=2, padding=1), nn.Flatten())
        input_features = second * math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width / 2) / 2)
        self.joint_encoder = nn.Sequential(*linear_block(input_features + fcrepr, fjoint))
        self.mu_head = nn.Linear(fjoint, fjoint)
        self.logvar_head = nn.Linear(fjoint, fjoint)
        # --- kept for inference ----------------------------------------------------------------------------
        encoders, features = zip(*(layer_encoder(shape, depth) for shape in representation_shapes), strict=True)
        self.layer_encoders = nn.ModuleList(encoders)
        self.representation_features = sum(features)
        self.repr_encoder = nn.Sequential(*linear_block(self.representation_features, fcrepr))
        self.decoder = Decoder(fjoint + fcrepr, image_shape, decoder_channels, decoder_style)

    INFERENCE_PREFIXES = ("layer_encoders.", "repr_encoder.", "decoder.")

    def encode_representation(self, representation: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(representation) != len(self.layer_encoders):
            raise ValueError(f"got {len(representation)} representation tensors, the purifier was built for "
                             f"{len(self.layer_encoders)}")
        flat = [encoder(tensor) for encoder, tensor in zip(self.layer_encoders, representation, strict=True)]
        return self.repr_encoder(torch.cat(flat, dim=1))

    def encode_input(self, x: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, c): mean and log-variance."""
        hidden = self.joint_encoder(torch.cat([self.input_encoder((x - self.mean) / self.std), code], dim=1))
        return self.mu_head(hidden), self.logvar_head(hidden)

    def decode_logits(self, z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, code)

    def reconstruct(self, code: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder-only sampling: images in [0, 1] from z ~ N(0, I) (or the given z) and the code."""
        if z is None:
            z = torch.randn(code.shape[0], self.latent_size, device=code.device, dtype=code.dtype)
        return torch.sigmoid(self.decode_logits(z, code))

    def reconstruct_from_term(self, code_term: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`reconstruct` from the decoder's `code_term` of each row's code (shared by an input's samples)."""
        return torch.sigmoid(self.decoder.decode(z, code_term))

    def forward(self, x: torch.Tensor, representation: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction logits, mu, logvar) with the reparameterised z ~ N(mu, sigma)."""
        code = self.encode_representation(representation)
        mu, logvar = self.encode_input(x, code)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_logits(z, code), mu, logvar

    def inference_state(self) -> dict[str, torch.Tensor]:
        """Only what decoding needs: the representation compressors and the decoder."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(self.INFERENCE_PREFIXES)}
