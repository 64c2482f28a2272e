"""AToP (defences/atop): random transforms, purifiers, losses, fitting and the Defence interface.

Ground truth where it exists: exact mask counts and patch geometry, the RT3 partition and composition,
closed-form loss values, a finite-difference check of the end-to-end gradient. Fitting tests run on small
slices of the digits training set with tiny purifiers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import defences
from bench.data import load_dataset
from bench.data.base import ImageSplit
from bench.zoo import build_architecture
from defences.atop import AToP
from defences.atop.losses import discriminator_loss, generator_adversarial_loss, l1_loss, mae_loss
from defences.atop.purifiers import InpaintingGenerator, MaskedAutoencoder, PatchDiscriminator
from defences.atop.training import org_loss, train_step
from defences.atop.transforms import PatchGrid, RandomTransform, compose, partition_masks, random_patch_mask
from defences.base import FitContext, Task

TASK = Task("digits", 1, 32, 32, 10, (0.3054,), (0.3237,), "Linf", 0.15)
TINY_GAN = {"generator_width": 4, "generator_stages": 1, "discriminator_width": 4}
TINY_AE = {"purifier": "ae", "ae_dim": 16, "ae_depth": 1, "ae_heads": 2, "ae_decoder_dim": 16,
           "ae_decoder_depth": 1, "ae_decoder_heads": 2}


def make_classifier() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("small_cnn", in_channels=1, num_classes=10, image_size=32, mean=TASK.mean,
                              std=TASK.std, channels=(4, 8), hidden=16).eval()


def make_atop(**params) -> AToP:
    torch.manual_seed(0)
    return defences.build("atop", classifier=make_classifier(), task=TASK, **{**TINY_GAN, **params})


def context(tmp_path: Path, seed: int = 0) -> FitContext:
    return FitContext(device=torch.device("cpu"), seed=seed, workdir=tmp_path, log=logging.getLogger("test"),
                      classifier_pretrained=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_train() -> ImageSplit:
    return load_dataset("digits", "train")


def subset(split: ImageSplit, n: int) -> ImageSplit:
    return ImageSplit(images=split.float_images(slice(0, n)), labels=split.labels[:n].clone())


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- random transforms ---------------------------------------------------------------------------

def test_fixed_count_masks_remove_exactly_r_of_the_patches_and_respect_the_geometry():
    grid = PatchGrid.for_image(32, 32, 8)
    assert (grid.patch_h, grid.patch_w, grid.count) == (4, 4, 64)  # p = side / 8
    masks = random_patch_mask(50, grid, 0.25, torch.device("cpu"), torch.Generator().manual_seed(0),
                              mode="fixed_count")
    assert masks.shape == (50, 1, 32, 32)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    # exactly 16 of the 64 4x4 patches are missing in every example: a missing fraction of exactly r
    assert torch.equal((1 - masks).mean(dim=(1, 2, 3)), torch.full((50,), 0.25))
    patches = masks.view(50, 8, 4, 8, 4)
    assert torch.equal(patches.amin(dim=(2, 4)), patches.amax(dim=(2, 4)))  # constant on each patch
    assert torch.equal((1 - patches.amin(dim=(2, 4))).sum(dim=(1, 2)), torch.full((50,), 16.0))


def binomial_bounds(trials: int, p: float, alpha: float = 1e-6) -> tuple[int, int]:
    """Counts outside [low, high] have probability < alpha under Binomial(trials, p) (exact quantiles)."""
    from scipy.stats import binom

    return int(binom.ppf(alpha / 2, trials, p)), int(binom.isf(alpha / 2, trials, p))


@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_bernoulli_masks_drop_each_patch_independently_with_probability_r(rate):
    """The paper's law (and the default): patch-missing counts follow the exact binomial laws it implies."""
    grid, batch = PatchGrid.for_image(32, 32, 8), 2000
    masks = random_patch_mask(batch, grid, rate, torch.device("cpu"), torch.Generator().manual_seed(2))
    patches = masks.view(batch, 8, 4, 8, 4)
    assert torch.equal(patches.amin(dim=(2, 4)), patches.amax(dim=(2, 4)))  # whole patches
    missing = (1 - patches.amin(dim=(2, 4))).flatten(1)  # (B, 64)
    low, high = binomial_bounds(batch * 64, rate)
    assert low <= int(missing.sum()) <= high                 # all patches together: Binomial(64 B, r)
    low, high = binomial_bounds(batch, rate, alpha=1e-6 / 64)
    per_position = missing.sum(0)
    assert ((per_position >= low) & (per_position <= high)).all()  # every position: Binomial(B, r)
    per_example = missing.sum(1)
    assert len(per_example.unique()) > 5                      # the count varies: not a fixed number per example
    # independence across the patches of one example: the variance of the count is 64 r (1 - r)
    assert per_example.var().item() == pytest.approx(64 * rate * (1 - rate), rel=0.15)


def test_atop_uses_bernoulli_masks_by_default_and_fixed_count_on_request():
    assert RandomTransform().mask_mode == "bernoulli"
    assert defences.build("atop", classifier=make_classifier(), task=TASK).transform.mask_mode == "bernoulli"
    fixed = defences.build("atop", classifier=make_classifier(), task=TASK, mask_mode="fixed_count")
    masks = fixed.transform.sample_masks(torch.rand(20, *TASK.image_shape), torch.Generator().manual_seed(0))
    missing = (1 - masks[0]).mean(dim=(1, 2, 3))
    assert torch.allclose(missing, torch.full((20,), round(0.25 * 64) / 64))
    with pytest.raises(ValueError, match="mask_mode='exact' is not valid; valid: bernoulli, fixed_count"):
        defences.build("atop", classifier=make_classifier(), task=TASK, mask_mode="exact")
    with pytest.raises(ValueError, match="mask_mode="):
        RandomTransform(mask_mode="exact")


def test_patch_grid_on_a_side_not_divisible_by_8():
    grid = PatchGrid.for_image(30, 20, 8)
    assert (grid.patch_h, grid.patch_w, grid.rows, grid.cols) == (4, 3, 8, 7)
    masks = random_patch_mask(3, grid, 0.5, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert masks.shape == (3, 1, 30, 20)
    with pytest.raises(ValueError, match="patches_per_side"):
        PatchGrid.for_image(4, 4, 8)


def test_rt1_multiplies_by_the_mask_without_noise():
    x = torch.rand(4, 1, 32, 32)
    copies, masks = RandomTransform("rt1").apply(x, torch.Generator().manual_seed(0))
    assert copies.shape == (1, 4, 1, 32, 32) and masks.shape == (1, 4, 1, 32, 32)
    assert torch.equal(copies[0], masks[0] * x)


def test_rt2_adds_gaussian_noise_of_sigma_then_masks():
    x = torch.full((64, 1, 32, 32), 0.5)
    copies, masks = RandomTransform("rt2", sigma=0.25).apply(x, torch.Generator().manual_seed(0))
    kept = masks[0].bool().expand_as(x)
    assert torch.all(copies[0][~kept] == 0)
    noise = copies[0][kept] - 0.5  # 49152 kept pixels: the sample std is within 1% of sigma
    assert noise.std().item() == pytest.approx(0.25, rel=0.01)
    assert abs(noise.mean().item()) < 0.005


def test_rt3_masks_are_disjoint_and_cover_every_pixel():
    grid = PatchGrid.for_image(32, 32, 8)
    masks = partition_masks(20, grid, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert masks.shape == (4, 20, 1, 32, 32)
    assert torch.equal((1 - masks).sum(dim=0), torch.ones(20, 1, 32, 32))  # every pixel missing exactly once
    assert torch.equal((1 - masks).mean(dim=(2, 3, 4)), torch.full((4, 20), 0.25))  # 16 patches each


def test_rt3_output_takes_each_pixel_from_exactly_one_purified_copy():
    masks = partition_masks(6, PatchGrid.for_image(32, 32, 8), 4, torch.device("cpu"),
                            torch.Generator().manual_seed(3))
    copy_id = torch.arange(1.0, 5.0).view(4, 1, 1, 1, 1).expand(4, 6, 1, 32, 32)
    composed = compose(copy_id, masks)
    expected = (1 - masks).argmax(dim=0).float() + 1  # the copy that had the pixel masked
    assert torch.equal(composed, expected)


class CopyIdPurifier(nn.Module):
    """A purifier double whose output at every pixel is the index (1..N) of the masked copy it was given."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch

    def forward(self, x_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(x_t.shape[0], dtype=x_t.dtype) // self.batch + 1
        return ids.view(-1, 1, 1, 1).expand_as(x_t)


def test_rt3_defence_purify_composes_the_copies_it_purified():
    atop = make_atop(transform="rt3")
    atop.purifier = CopyIdPurifier(batch=5)
    x = torch.rand(5, 1, 32, 32)
    purified, regenerated = atop.purify_with_mask(x, torch.Generator().manual_seed(7))
    masks = atop.transform.sample_masks(x, torch.Generator().manual_seed(7))  # the same masks again
    assert torch.equal(purified, (1 - masks).argmax(dim=0).float() + 1)
    assert torch.equal(regenerated, torch.ones_like(x))


def test_randomness_is_fresh_on_every_call_and_per_example():
    atop = make_atop(transform="rt2")
    x = torch.rand(1, 1, 32, 32).expand(8, 1, 32, 32).contiguous()  # eight copies of one image
    masks = atop.transform.sample_masks(x)[0]
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 8  # a different mask per example
    with torch.no_grad():
        first, second = atop.purify(x), atop.purify(x)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    with torch.no_grad():
        again = atop.purify(x)
    torch.manual_seed(5)
    with torch.no_grad():
        assert torch.equal(again, atop.purify(x))  # reproducible under a fixed seed


def test_transform_settings_are_validated():
    with pytest.raises(ValueError, match="valid: rt1, rt2, rt3"):
        RandomTransform("rt4")
    with pytest.raises(ValueError, match="valid: rt1, rt2, rt3"):
        defences.build("atop", classifier=make_classifier(), task=TASK, transform="rt9")
    with pytest.raises(ValueError, match="valid: gan, ae"):
        defences.build("atop", classifier=make_classifier(), task=TASK, purifier="vae")


# --- losses ----------------------------------------------------------------------------------------

def test_gan_losses_closed_form():
    real, fake = torch.tensor([[2.0, 0.5]]), torch.tensor([[-2.0, 0.5]])
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1.5)/2
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(1.0)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(0.75)  # -mean(D(g))
    softplus = torch.nn.functional.softplus
    expected = softplus(-real).mean() + softplus(fake).mean()
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(expected.item())
    assert generator_adversarial_loss(fake, "non_saturating").item() == pytest.approx(softplus(-fake).mean().item())
    with pytest.raises(ValueError, match="valid: hinge, non_saturating"):
        discriminator_loss(real, fake, "wasserstein")


def test_reconstruction_losses_closed_form():
    target = torch.zeros(1, 1, 2, 2)
    purified = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    regenerated = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert l1_loss(purified, target).item() == pytest.approx(2.5)
    assert mae_loss(purified, target, regenerated, 0.0).item() == pytest.approx((1 + 16) / 2)  # masked only
    assert mae_loss(purified, target, regenerated, 1.0).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert mae_loss(purified, target, regenerated, 0.5).item() == pytest.approx((1 + 16 + 0.5 * 13) / 3)


# --- purifiers and the defence ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (3, 64, 48)])
def test_purifiers_are_sized_by_the_image(shape):
    c, h, w = shape
    x, mask = torch.rand(2, c, h, w), torch.ones(2, 1, h, w)
    purifiers = (InpaintingGenerator(c, h, w, 4, stages=2), InpaintingGenerator(c, h, w, 4, 1, "compact"),
                 MaskedAutoencoder(c, h, w, 8, 16, 1, 2, 16, 1, 2))
    for purifier in purifiers:
        out = purifier(x, mask)
        assert out.shape == (2, c, h, w) and out.min() >= 0 and out.max() <= 1
    assert PatchDiscriminator(c, h, w, 4)(x).dim() == 2


def test_autoencoder_ignores_the_content_of_masked_patches():
    ae = MaskedAutoencoder(1, 32, 32, 4, 16, 1, 2, 16, 1, 2).eval()
    mask = random_patch_mask(2, PatchGrid.for_image(32, 32, 8), 0.25, torch.device("cpu"),
                             torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ae(x * mask, mask), ae(x * mask + (1 - mask) * torch.rand_like(x), mask), atol=1e-6)


@pytest.mark.parametrize("transform", ["rt1", "rt2", "rt3"])
def test_gradients_reach_the_input_end_to_end(transform):
    atop = make_atop(transform=transform).double().eval()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([3, 7])

    def loss_at(point: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(11)  # the same masks and noise on every evaluation
        return nn.functional.cross_entropy(atop(point), y)

    grad, = torch.autograd.grad(loss_at(x), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    direction = torch.randn_like(x)
    h = 1e-6
    numeric = (loss_at(x + h * direction) - loss_at(x - h * direction)) / (2 * h)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-8)


def test_purify_and_classify_are_the_attack_surfaces():
    atop = make_atop().eval()
    x = torch.rand(3, 1, 32, 32)
    torch.manual_seed(2)
    purified = atop.purify(x)
    torch.manual_seed(2)
    assert torch.equal(atop(x), atop.classify(purified))
    assert torch.equal(atop.classify(x), atop.classifier(x))
    assert atop.stochastic and atop.has_purifier


def test_checkpoint_excludes_the_classifier_and_the_base_and_reloads(tmp_path):
    base = make_atop()
    atop = defences.build("atop", classifier=base.classifier, task=TASK, base=base, **TINY_GAN)
    state = atop.checkpoint_state()
    assert state and all(k.startswith(("purifier.", "discriminator.")) for k in state)
    assert all(not name.startswith("base.") for name, _ in atop.named_parameters())
    atop.save(tmp_path, {"note": "test"})
    reloaded = defences.build("atop", classifier=base.classifier, task=TASK, base=base, **TINY_GAN)
    reloaded.load(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    torch.manual_seed(4)
    expected = atop.eval()(x)
    torch.manual_seed(4)
    assert torch.equal(reloaded.eval()(x), expected)


# --- fitting -----------------------------------------------------------------------------------------

def test_fit_refuses_an_untrained_classifier_without_a_base(tmp_path, digits_train):
    atop = make_atop(pretrain_epochs=1)
    ctx = context(tmp_path)
    ctx.classifier_pretrained = False
    with pytest.raises(ValueError, match="base: standard"):
        atop.fit(subset(digits_train, 8), ctx)


def test_finetune_step_adds_the_ce_term_through_the_frozen_classifier(digits_train):
    from attacks.gradient import FGSM
    from defences.atop.training import adam
    from defences.fitting import frozen

    x, y = digits_train.float_images(slice(0, 16)), digits_train.labels[:16]
    updates = {}
    for weight in (0.0, 0.1):
        atop = make_atop(cls_weight=weight, finetune_eps=0.15)
        classifier_before, purifier_before = state_of(atop.classifier), state_of(atop.purifier)
        optimiser = adam(atop.purifier.parameters(), 1e-3, atop)
        d_optimiser = adam(atop.discriminator.parameters(), 1e-3, atop)
        torch.manual_seed(0)
        with frozen(atop.classifier):
            terms = train_step(atop, x, y, FGSM(eps=0.15), optimiser, d_optimiser)
        assert all(torch.equal(v, classifier_before[k]) for k, v in atop.classifier.state_dict().items())
        assert all(p.grad is None for p in atop.classifier.parameters())
        assert all(p.requires_grad for p in atop.classifier.parameters())  # unfrozen again afterwards
        updates[weight] = {k: v - purifier_before[k] for k, v in state_of(atop.purifier).items()}
        # the recorded total is L_org + lambda * CE, the CE measured on f(g(t(x')))
        assert terms["loss"] == pytest.approx(terms["g_adv"] + terms["l1"] + weight * terms["ce"], rel=1e-5)
    assert any(not torch.allclose(updates[0.0][k], updates[0.1][k]) for k in updates[0.0])


@pytest.mark.parametrize(("settings", "terms"), [(TINY_GAN, {"l1", "g_adv", "d_loss"}), (TINY_AE, {"mae"})],
                         ids=["gan", "ae"])
def test_finetuning_changes_the_purifier_and_not_the_classifier(tmp_path, digits_train, settings, terms):
    common = {**settings, "gan_weight": 0.1}
    base = make_atop(**common, pretrain_epochs=1, pretrain_batch_size=32, finetune=False)
    base.fit(subset(digits_train, 64), context(tmp_path / "noft"))
    classifier_before = state_of(base.classifier)
    atop = defences.build("atop", classifier=base.classifier, task=TASK, base=base,
                          **{**TINY_GAN, **common, "finetune_epochs": 1, "finetune_batch_size": 32,
                             "finetune_eps": 0.15})
    summary = atop.fit(subset(digits_train, 64), context(tmp_path / "ft"))
    assert summary["pretrain"]["from_base_stage"] and summary["finetune"]["epochs"] == 1
    assert {"ce", "purified_adv_acc", "loss"} | terms <= set(summary["finetune"]["history"][0])
    assert all(torch.equal(v, classifier_before[k]) for k, v in atop.classifier.state_dict().items())
    before, after = state_of(base.purifier), state_of(atop.purifier)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_base_stage_purifier_is_copied_when_not_finetuning(tmp_path, digits_train):
    base = make_atop(pretrain_epochs=1, pretrain_batch_size=32, finetune=False)
    base.fit(subset(digits_train, 32), context(tmp_path / "a"))
    copy = defences.build("atop", classifier=base.classifier, task=TASK, base=base, finetune=False, **TINY_GAN)
    copy.fit(subset(digits_train, 32), context(tmp_path / "b"))
    assert all(torch.equal(v, base.purifier.state_dict()[k]) for k, v in copy.purifier.state_dict().items())
    mismatched = defences.build("atop", classifier=base.classifier, task=TASK, base=base,
                                **{**TINY_GAN, "generator_width": 6})
    with pytest.raises(ValueError, match="architecture settings"):
        mismatched.fit(subset(digits_train, 32), context(tmp_path / "c"))


@pytest.mark.parametrize("settings", [TINY_GAN, TINY_AE], ids=["gan", "ae"])
def test_pretraining_lowers_the_reconstruction_loss_on_digits(tmp_path, digits_train, settings):
    # the GAN weight of the digits scenario: at weight 1 the discriminator wins within a few small epochs
    atop = make_atop(**settings, pretrain_epochs=3, pretrain_batch_size=32, lr=2e-3, discriminator_lr=2e-3,
                     gan_weight=0.01, finetune=False)
    held_out = digits_train.float_images(slice(1000, 1128))

    def reconstruction() -> float:
        atop.eval()
        with torch.no_grad():
            purified, regenerated = atop.purify_with_mask(held_out, torch.Generator().manual_seed(0))
            if atop.discriminator is None:
                return org_loss(atop, purified, held_out, regenerated)[0].item()  # L_org = L_mae
            return l1_loss(purified, held_out).item()  # L_org's reconstruction term

    before = reconstruction()
    summary = atop.fit(subset(digits_train, 256), context(tmp_path))
    after = reconstruction()
    assert after < 0.6 * before, (before, after, summary["pretrain"]["history"])


def test_pretraining_resumes_to_the_same_weights(tmp_path, digits_train):
    train = subset(digits_train, 48)
    settings = {"pretrain_batch_size": 16, "finetune": False, "lr": 1e-3}
    straight = make_atop(pretrain_epochs=2, **settings)
    straight.fit(train, context(tmp_path / "straight"))
    interrupted = make_atop(pretrain_epochs=1, **settings)
    interrupted.fit(train, context(tmp_path / "resumed"))  # leaves its epoch-0 checkpoint behind
    resumed = make_atop(pretrain_epochs=2, **settings)
    torch.manual_seed(123)  # a different fresh initialisation: the checkpoint must override it
    resumed.purifier.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    summary = resumed.fit(train, context(tmp_path / "resumed"))
    assert summary["pretrain"]["resumed_from_epoch"] == 1
    for key, value in straight.purifier.state_dict().items():
        assert torch.equal(value, resumed.purifier.state_dict()[key]), key
