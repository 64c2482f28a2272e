"""CARSO's latent KL for the randomness audit: the closed form for a known posterior, saved with the trained
encoder and unavailable (never made up) when the checkpoint has no encoder."""

from __future__ import annotations

import pytest
import torch

import defences
from attacks.protocol import randomness_audit
from bench.zoo import SmallCNN
from defences.base import Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = Task(dataset="digits", channels=1, height=32, width=32, num_classes=10, mean=(0.3,), std=(0.4,),
            norm="Linf", eps=0.15)
TINY = {"fcrepr": 32, "fjoint": 8, "decoder_channels": [16, 16, 8, 8, 4], "samples": 4, "check_examples": 16}


def tiny_carso(seed: int = 0):
    torch.manual_seed(seed)
    classifier = SmallCNN(1, 10, 32, channels=(4, 8), hidden=16, mean=0.3, std=0.4).eval()
    return defences.build("carso", classifier=classifier, task=TASK, **TINY).eval()


def test_latent_kl_is_the_closed_form_and_travels_with_the_checkpoint(tmp_path):
    carso = tiny_carso()
    with torch.no_grad():  # posterior N(mu = 1, var = e^0.5) whatever x: KL = 0.5 * 8 * (1 + e^0.5 - 1 - 0.5)
        for head, value in ((carso.purifier.mu_head, 1.0), (carso.purifier.logvar_head, 0.5)):
            head.weight.zero_()
            head.bias.fill_(value)
    expected = 0.5 * 8 * (1.0 + torch.tensor(0.5).exp().item() - 1.0 - 0.5)
    x = torch.rand(5, 1, 32, 32)
    with pytest.raises(RuntimeError, match="posterior.safetensors"):
        carso.latent_kl(x)  # not fitted: the encoder holds no trained weights
    carso._posterior_trained = True  # what fit() sets once the encoder is trained
    carso.save(tmp_path / "trained", {})
    fresh = tiny_carso(seed=1)
    fresh.load(tmp_path / "trained")
    torch.testing.assert_close(fresh.latent_kl(x), torch.full((5,), expected))

    predictions = torch.zeros(3, 5, dtype=torch.long)
    audit = randomness_audit(fresh, predictions, predictions, x, x)
    assert audit["clean"]["latent_kl"] == pytest.approx(expected)

    (tmp_path / "trained" / "posterior.safetensors").unlink()  # an inference-only checkpoint
    inference_only = tiny_carso(seed=1)
    inference_only.load(tmp_path / "trained")
    assert not inference_only.has_posterior
    assert "latent_kl" not in randomness_audit(inference_only, predictions, predictions, x, x)["clean"]
