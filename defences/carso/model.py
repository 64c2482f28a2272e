"""`carso`: the CARSO defence (the CARSO paper): a frozen classifier plus a representation-conditional VAE purifier.

Inference (decoder only): capture the classifier's representation of x, compress it, decode `samples`
reconstructions from z ~ N(0, I), classify them all with the same classifier (in chunks: `chunk_size`),
aggregate the logits into log-probabilities (`double_exp` by default). The whole pass is differentiable
end to end and stochastic: two calls differ, the same torch seed gives the same output (z is drawn for
all samples at once, so the result does not depend on the chunk size).

`purify(x)` is one reconstruction per input (one z draw), `classify` the classifier, so BPDA-style attacks
can use the parts. The classifier comes from the base stage (`base: at` in a grid) and is never saved
here; the checkpoint holds only the representation compressors and the decoder. The training-only encoder
q(z | x, c) is saved beside it (`posterior.safetensors`) for the randomness audit's `latent_kl`; inference
never reads it, and a folder without it loads (latent_kl is then unavailable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from defences.base import WEIGHTS_FILE, Defence, FitContext, Task
from defences.carso.aggregation import aggregate
from defences.carso.params import CarsoParams
from defences.carso.purifier import Purifier
from defences.carso.representation import capture, default_layers
from defences.carso.training import posterior_kl, train_purifier
from defences.fitting import accuracy

PURIFIER_PREFIX = "purifier."
CPU_MIN_ROWS = 64
POSTERIOR_FILE = "posterior.safetensors"


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def representation_shapes(classifier: nn.Module, task: Task, layers: list[str]) -> list[tuple[int, ...]]:
    """Per-example shapes of the captured tensors, from one probe pass in eval mode."""
    was_training = classifier.training
    classifier.eval()
    try:
        probe = torch.zeros(1, *task.image_shape, device=_module_device(classifier))
        tensors, _ = capture(classifier, probe, layers)
    finally:
        classifier.train(was_training)
    return [tuple(t.shape[1:]) for t in tensors]


class Carso(Defence):
    """CARSO: classifier + representation-conditional purifier, robust aggregation of N reconstructions."""

    Params = CarsoParams
    code_version = "1"
    stochastic = True
    has_purifier = True
    saves_classifier = False
    # One warm-up epoch at the 5e-9 initial LR: the summed-BCE RAdam diverges without it (params.py).
    smoke_budget = {"epochs": 1, "batch_size": 4, "micro_batch": 2, "warmup_epochs": 1, "pgd_steps": 2,
                    "plateau_epochs": 0, "anneal_epochs": 0, "kl_start_epoch": 0, "kl_end_epoch": 1, "samples": 2,
                    "check_examples": 4}
    cost_kind = "carso"

    def __init__(self, classifier: nn.Module, task: Task, params: CarsoParams, base: Defence | None = None):
        super().__init__(classifier, task, params, base)
        self.layers = list(params.layers) if params.layers else default_layers(classifier)
        self.representation_shapes = representation_shapes(classifier, task, self.layers)
        arch = params.architecture(min(task.height, task.width))
        self.purifier = Purifier(
            task.image_shape, task.mean, task.std, self.representation_shapes, fcrepr=arch["fcrepr"],
            fjoint=arch["fjoint"], depth=arch["depth"], decoder_channels=params.decoder_channels,
            decoder_style=params.decoder_style, input_channels=params.input_encoder_channels,
        ).to(_module_device(classifier))
        self.purifier.decoder.checkpointed = params.gradient_checkpointing
        self.classifier.eval()

    def train(self, mode: bool = True) -> Carso:
        """The classifier is frozen: it (and the base defence) stays in eval mode whatever the mode."""
        super().train(mode)
        self.classifier.eval()
        if self.base is not None:
            self.base.eval()
        return self

    # --- inference -----------------------------------------------------------------------------------------
    def representation_code(self, x: torch.Tensor) -> torch.Tensor:
        representation, _ = capture(self.classifier, x, self.layers)
        return self.purifier.encode_representation(representation)

    def sample_logits(self, code: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Classifier logits (N, B, C) of N decoder samples per representation code."""
        n = samples or self.params.samples
        batch = code.shape[0]
        z = torch.randn(n * batch, self.purifier.latent_size, device=code.device, dtype=code.dtype)
        term = self.purifier.decoder.code_term(code)  # once per input; row a * B + b is sample a of input b
        chunk = self.chunk_size(batch)
        logits = [self.classifier(self.purifier.reconstruct_from_term(term[rows % batch], z[rows]))
                  for rows in torch.arange(n * batch, device=code.device).split(chunk)]
        return torch.cat(logits).view(n, batch, -1)

    def chunk_size(self, batch: int) -> int:
        """Reconstructions decoded and classified per pass: up to `max_batch`; on a CPU the batch itself (one
        sample of every input per pass) but at least CPU_MIN_ROWS: activations of ~64 32x32 images stay in
        cache (512 at once ran ~2x slower on the digits CNN), and fewer rows per pass are mostly call overhead
        (a batch of 9, as in an escalation round on the few points left: 1.5x faster forward with 64).
        Measured in bench/benchmarks/speed.py and with the demo's CARSO."""
        if _module_device(self.purifier).type == "cuda":
            return self.params.max_batch
        return max(1, min(self.params.max_batch, max(batch, CPU_MIN_ROWS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aggregate(self.sample_logits(self.representation_code(x)), self.params.aggregation)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier.reconstruct(self.representation_code(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        """forward's output (same z draws, same aggregation), the whole purifier (representation, code, decoder)
        seen as the identity in the backward pass: every decoded sample passes its gradient straight to x."""
        n, batch = self.params.samples, x.shape[0]
        chunk = self.chunk_size(batch)
        with torch.no_grad():
            code = self.representation_code(x)
            z = torch.randn(n * batch, self.purifier.latent_size, device=code.device, dtype=code.dtype)
            codes = code.repeat(n, 1)  # row a * B + b: sample a of input b, as in sample_logits
            decoded = torch.cat([self.purifier.reconstruct(codes[i:i + chunk], z[i:i + chunk])
                                 for i in range(0, n * batch, chunk)])
        identity = x.repeat(n, *([1] * (x.dim() - 1)))
        through = decoded + (identity - identity.detach())
        logits = torch.cat([self.classifier(through[i:i + chunk]) for i in range(0, n * batch, chunk)])
        return aggregate(logits.view(n, batch, -1), self.params.aggregation)

    @property
    def has_posterior(self) -> bool:
        """Whether the encoder q(z | x, c) holds trained weights (after fit, or loaded with the checkpoint)."""
        return bool(getattr(self, "_posterior_trained", False))

    @torch.no_grad()
    def latent_kl(self, x: torch.Tensor) -> torch.Tensor:
        """Per example KL(q(z | x, c(x)) || N(0, I)) in nats: how far the encoder's posterior for x is from the
        prior that inference samples z from (0: z carries nothing about x)."""
        if not self.has_posterior:
            raise RuntimeError("latent_kl needs the trained encoder q(z | x, c); this CARSO was loaded from a "
                               f"checkpoint without {POSTERIOR_FILE}")
        mu, logvar = self.purifier.encode_input(x, self.representation_code(x))
        return posterior_kl(mu, logvar)

    # --- fitting -------------------------------------------------------------------------------------------
    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        summary = train_purifier(self, train, ctx)
        summary.update(self.training_check(train, ctx))
        self._posterior_trained = True
        self.eval()
        return {"layers": self.layers, "representation_shapes": [list(s) for s in self.representation_shapes],
                "purifier_parameters": sum(p.numel() for p in self.purifier.parameters()),
                "inference_parameters": sum(v.numel() for v in self.purifier.inference_state().values()),
                **summary}

    @torch.no_grad()
    def training_check(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        """Clean accuracy of the classifier and of the whole defence on a fixed subset of training images."""
        n = min(self.params.check_examples, len(train))
        if n == 0:
            return {}
        self.eval()
        index = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed))[:n]
        x, y = train.float_images(index).to(ctx.device), train.labels[index].to(ctx.device)
        classifier_accuracy = accuracy(self.classifier, x, y, ctx.device, batch_size=128)
        carso_accuracy = accuracy(self, x, y, ctx.device, batch_size=128)
        ctx.log.info("carso check on %d training images: classifier %.3f, carso %.3f", n, classifier_accuracy,
                     carso_accuracy)
        return {"check_examples": n, "check_classifier_accuracy": classifier_accuracy,
                "check_carso_accuracy": carso_accuracy}

    # --- persistence ---------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {PURIFIER_PREFIX + k: v.detach().contiguous().cpu() for k, v in self.purifier.inference_state().items()}

    def posterior_state(self) -> dict[str, torch.Tensor]:
        """The training-only encoder q(z | x, c), saved apart from the inference checkpoint."""
        inference = set(self.purifier.inference_state())
        return {k: v.detach().contiguous().cpu() for k, v in self.purifier.state_dict().items() if k not in inference}

    def save(self, folder: Path, metadata: dict[str, Any]) -> None:
        if self.has_posterior:  # an encoder never trained is not saved: it would pass for a trained one
            folder.mkdir(parents=True, exist_ok=True)
            save_file(self.posterior_state(), str(folder / POSTERIOR_FILE))
        super().save(folder, metadata)

    def load(self, folder: Path) -> None:
        self._load_posterior(folder)
        state = load_file(str(folder / WEIGHTS_FILE))
        expected = set(self.checkpoint_state())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {folder} does not match this CARSO purifier (layers {self.layers[:3]}..., "
                               f"settings {self.params}): missing {missing[:5]}, unexpected {unexpected[:5]}")
        device = _module_device(self.purifier)
        self.purifier.load_state_dict({k.removeprefix(PURIFIER_PREFIX): v.to(device) for k, v in state.items()},
                                      strict=False)

    def _load_posterior(self, folder: Path) -> None:
        path = folder / POSTERIOR_FILE
        self._posterior_trained = False
        if not path.exists():
            return
        state, expected = load_file(str(path)), set(self.posterior_state())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise RuntimeError(f"{path} does not match this CARSO's encoder: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        device = _module_device(self.purifier)
        self.purifier.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
        self._posterior_trained = True
