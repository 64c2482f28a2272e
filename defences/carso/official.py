"""The authors' published CARSO checkpoints, loaded into this harness's `carso` (the CARSO paper; emaballarin/CARSO).

The CARSO repository's `models/get_models_test.sh` lists, per scenario, the classifier and the purifier
in three safetensors files, each written by `safetensors.torch.save_model` of one submodule of its
`CARSOWrap` (so the names are relative to that submodule):

- `<release>_repr_compressors.safetensors`: a ModuleList, one Sequential per hooked layer of conv blocks
  (Conv-BN-LeakyReLU; a 4th block only at 64x64): `{i}.{j}.0.weight` (conv) and
  `{i}.{j}.1.{weight,bias,running_mean,running_var,num_batches_tracked}` (BN) ->
  `layer_encoders.{i}.{3j}.weight`, `layer_encoders.{i}.{3j+1}.*`;
- `<release>_repr_fcn_compressor.safetensors`: Concatenate, then Linear-BN-LeakyReLU: `1.0.weight`, `1.1.*` ->
  `repr_encoder.0.weight`, `repr_encoder.1.*`;
- `<release>_decoder.safetensors`: adapter (Concatenate, Linear, LeakyReLU, Unflatten), 4 ConvT-BN-LeakyReLU
  blocks, ConvT, Sigmoid: `0.1.{weight,bias}` -> `decoder.project.0.*`; `{b}.0.weight`, `{b}.1.*` (b = 1..4) ->
  `decoder.deconv.{3(b-1)}.weight`, `decoder.deconv.{3(b-1)+1}.*`; `5.{weight,bias}` -> `decoder.deconv.12.*`.

The architectures agree (read from the public `src/tooling/modelpieces.py` and `src/carso.py`): the
26 hooked WRN-28-10 layers in the same order (conv_0, conv_1 of every block, the block-0 shortcuts of
groups 1 and 2 after that block's conv_1), per-layer compressors to ceil(c/2), ceil(c/4), ceil(c/8)
[, ceil(c/16) at 64x64] channels with unpadded 3x3 convolutions, flattened and concatenated in that order,
Linear(compr_cond_dim) = fcrepr (512 CIFAR, 768 TinyImageNet), latent joint_latent_dim = fjoint (128, 192),
the decoder input cat(z, code), 256x3x3 (output_padding 0, last ConvT k2) for 32x32 and 256x4x4
(output_padding 1, last ConvT k3) for 64x64, z ~ N(0, I). Their PeeL aggregation is our `double_exp`.
Their classifiers are ebtorch's `WideResNet` (the DeepMind layout with SiLU, `WideResNet(28, 10,
activation="silu")` here; CIFAR-10/100 and Tiny ImageNet statistics equal to this harness's; the Tiny
ImageNet one pools adaptively, as ours does). Not published: the input encoder and the mu/log-variance
heads (training only), so a published purifier cannot be trained further here.

`PublishedCarso` is a `carso` whose "fit" loads these files from `checkpoint_dir` instead of training;
a file whose tensors differ from this layout is an error listing the missing, unexpected and
mis-shaped tensors by their published names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from defences.base import FitContext
from defences.carso.model import Carso
from defences.carso.params import CarsoParams

PARTS = ("repr_compressors", "repr_fcn_compressor", "decoder")
DOWNLOAD_SCRIPT = "https://github.com/emaballarin/CARSO/blob/main/models/get_models_test.sh"

# Published classifier file and purifier release prefix, per scenario of the CARSO paper Table 2.
RELEASES: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar10_a3_b10_t4_20m_w.safetensors", "wrn_28_10_cifar_10_cui_2023"),
    "cifar100": ("cifar100_a5_b12_t4_50m_w.safetensors", "wrn_28_10_cifar_100_cui_2023"),
    "tinyimagenet": ("tiny_linf_wrn28_10_w.safetensors", "wrn_28_10_tinyimagenet_200_wang_2023"),
}


class PublishedLayoutError(ValueError):
    """A published file whose tensors do not match the harness's purifier; the message lists the differences."""


def _map_compressors(name: str) -> str | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.([01])\.(\w+)", name)
    if not match:
        return None
    layer, block, part, leaf = match.groups()
    return f"layer_encoders.{layer}.{3 * int(block) + int(part)}.{leaf}"


def _map_fcn(name: str) -> str | None:
    match = re.fullmatch(r"1\.([01])\.(\w+)", name)
    return f"repr_encoder.{match.group(1)}.{match.group(2)}" if match else None


def _decoder_mapper(upsamplings: int) -> Callable[[str], str | None]:
    def map_name(name: str) -> str | None:
        if match := re.fullmatch(r"0\.1\.(weight|bias)", name):
            return f"decoder.project.0.{match.group(1)}"
        if match := re.fullmatch(r"(\d+)\.([01])\.(\w+)", name):
            block, part, leaf = int(match.group(1)), int(match.group(2)), match.group(3)
            if 1 <= block <= upsamplings:
                return f"decoder.deconv.{3 * (block - 1) + part}.{leaf}"
        if match := re.fullmatch(rf"{upsamplings + 1}\.(weight|bias)", name):
            return f"decoder.deconv.{3 * upsamplings}.{match.group(1)}"
        return None

    return map_name


def published_to_harness(parts: Mapping[str, Mapping[str, torch.Tensor]], upsamplings: int = 4
                         ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(state under the harness's purifier names, harness name -> published name, unmappable published names)."""
    mappers = {"repr_compressors": _map_compressors, "repr_fcn_compressor": _map_fcn,
               "decoder": _decoder_mapper(upsamplings)}
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmapped: list[str] = []
    for part, tensors in parts.items():
        for name, tensor in tensors.items():
            target = mappers[part](name)
            if target is None:
                unmapped.append(f"{part}:{name}")
                continue
            state[target], origin[target] = tensor, f"{part}:{name}"
    return state, origin, unmapped


def layout_differences(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                       origin: Mapping[str, str], unmapped: list[str]) -> list[str]:
    """Human-readable differences; BatchNorm's num_batches_tracked counter may be absent."""
    problems = []
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) the harness needs: {missing[:8]}")
    unexpected = unmapped + [origin[k] for k in state if k not in expected]
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} published tensor(s): {unexpected[:8]}")
    mismatched = [f"{origin[k]} has shape {tuple(state[k].shape)}, the harness's {k} {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched[:8]}")
    return problems


def read_parts(folder: Path, release: str) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    paths = {part: folder / f"{release}_{part}.safetensors" for part in PARTS}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"published CARSO purifier files not found: {absent}. Download them with the "
                                f"curl lines of {DOWNLOAD_SCRIPT} into {folder} (or set checkpoint_dir).")
    return {part: load_file(str(path), device="cpu") for part, path in paths.items()}


def load_published_purifier(carso: Carso, parts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Fill `carso.purifier`'s inference part from the three published state dicts, or raise with the differences."""
    expected = carso.purifier.inference_state()
    upsamplings = len(carso.params.decoder_channels) - 1
    state, origin, unmapped = published_to_harness(parts, upsamplings)
    problems = layout_differences(expected, state, origin, unmapped)
    if problems:
        raise PublishedLayoutError("the published CARSO purifier does not fit this carso (layers "
                                   f"{len(carso.layers)}, settings fcrepr/fjoint/depth "
                                   f"{carso.params.architecture(carso.task.height)}): " + "; ".join(problems))
    device = next(carso.purifier.parameters()).device
    carso.purifier.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)


@dataclass
class PublishedCarsoParams(CarsoParams):
    checkpoint_dir: str = "models/carso_official"
    release: str | None = None  # None: RELEASES[<dataset>][1]
    random_if_missing: bool = False  # smoke mode only: keep random weights when the files are absent


class PublishedCarso(Carso):
    """CARSO with the authors' published purifier (no training here): `fit` loads it from `checkpoint_dir`."""

    Params = PublishedCarsoParams
    code_version = "1"
    # it trains nothing, so no warm-up epoch; absent published files: random weights
    smoke_budget = {**Carso.smoke_budget, "warmup_epochs": 0, "random_if_missing": True}

    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        del train
        release = self.params.release or RELEASES[self.task.dataset][1]
        folder = Path(self.params.checkpoint_dir).expanduser()
        try:
            parts = read_parts(folder, release)
        except FileNotFoundError:
            if not self.params.random_if_missing:
                raise
            ctx.log.warning("published CARSO files absent in %s: random purifier weights (smoke mode)", folder)
            return {"published": False, "release": release}
        load_published_purifier(self, parts)
        self.eval()
        return {"published": True, "release": release, "checkpoint_dir": str(folder), "layers": self.layers,
                "inference_parameters": sum(v.numel() for v in self.purifier.inference_state().values())}
