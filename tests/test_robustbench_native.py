"""`robustbench:<name>` read natively from RobustBench's checkpoint layout, and checked against RobustBench's classes.

The tests against RobustBench's own model classes run where the `robustbench` extra is installed (CI installs it;
elsewhere they skip, see the `robustbench_package` fixture); the rest run everywhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.zoo import load_classifier
from bench.zoo.preact_resnet import PreActResNet18
from bench.zoo.robustbench import ENTRIES, checkpoint_path, load_native
from bench.zoo.trades_wide_resnet import TradesWideResNet

SHAPE = {"in_channels": 3, "num_classes": 10, "image_size": 32}


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that layout differences show in the logits."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(count, generator=generator) * 0.1)
    return model.eval()


def save_robustbench_style(state: dict[str, torch.Tensor], path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": torch.tensor(3)}, path)


def test_a_checkpoint_of_another_architecture_is_refused_with_the_mismatch(tmp_path):
    from bench.zoo import WideResNet

    save_robustbench_style(WideResNet(16, 2).state_dict(),
                           checkpoint_path(tmp_path, "cifar10", "Linf", "Cui2023Decoupled_WRN-28-10"))
    with pytest.raises(ValueError, match="does not fit robustbench:Cui2023Decoupled_WRN-28-10"):
        load_native("Cui2023Decoupled_WRN-28-10", tmp_path, "cifar10", "Linf")


@pytest.mark.determinism
def test_cui2023_checkpoint_round_trip(tmp_path):
    from bench.zoo import WideResNet
    from bench.zoo.robustbench import CIFAR100_MEAN, CIFAR100_STD

    torch.manual_seed(1)
    reference = randomise_batchnorm(WideResNet(28, 10, 100, activation="silu", mean=CIFAR100_MEAN, std=CIFAR100_STD))
    save_robustbench_style(reference.state_dict(), checkpoint_path(tmp_path, "cifar100", "Linf",
                                                                     "Cui2023Decoupled_WRN-28-10"))
    model, provenance = load_classifier("robustbench:Cui2023Decoupled_WRN-28-10", **SHAPE, model_dir=tmp_path,
                                        dataset="cifar100")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert provenance["pretrained"] is True and not model.training


def test_missing_checkpoint_names_the_file_the_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_classifier("robustbench:Standard", **SHAPE, model_dir=tmp_path, dataset="cifar10")
    message = str(caught.value)
    assert "Standard.pt" in message and str(tmp_path / "cifar10" / "Linf") in message
    assert "load_model('Standard'" in message


def test_trades_wide_resnet_has_robustbench_standard_names():
    names = set(TradesWideResNet(28, 10).state_dict())
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.3.conv2.weight", "bn1.running_var",
            "fc.weight", "fc.bias"} <= names
    assert not any("convShortcut" in n for n in names if n.startswith("block1.layer.1."))


def test_preact_shortcut_source_changes_only_the_projection_input():
    torch.manual_seed(2)
    activated = randomise_batchnorm(PreActResNet18())
    from_input = PreActResNet18(shortcut_from="input")
    from_input.load_state_dict(activated.state_dict())
    from_input.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(activated(x), from_input(x))
    with pytest.raises(ValueError, match="shortcut_from"):
        PreActResNet18(shortcut_from="raw")


# --- against RobustBench's own classes (only where robustbench imports) --------------------------------------

def robustbench_model(package, name: str, dataset: str, threat: str) -> nn.Module:
    """A fresh (randomly initialised) model of RobustBench's zoo, built by RobustBench's own constructor."""
    zoo, enums, _ = package
    return zoo.model_dicts[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat)][name]["model"]()


@pytest.mark.determinism
@pytest.mark.parametrize("dataset,threat,name", sorted(ENTRIES))
def test_native_models_match_robustbench_logit_for_logit(tmp_path, robustbench_package, dataset, threat, name):
    load_model = robustbench_package[2].load_model
    torch.manual_seed(3)
    theirs = randomise_batchnorm(robustbench_model(robustbench_package, name, dataset, threat))
    save_robustbench_style(theirs.state_dict(), checkpoint_path(tmp_path, dataset, threat, name))
    theirs = load_model(model_name=name, model_dir=str(tmp_path), dataset=dataset, threat_model=threat).eval()
    ours = load_native(name, tmp_path, dataset, threat)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block,shortcut_from", [("PreActBlock", "input"), ("PreActBlockV2", "activated")])
def test_preact_resnet18_matches_robustbench_preactresnet(robustbench_package, block, shortcut_from):
    from robustbench.model_zoo.architectures import resnet

    torch.manual_seed(4)
    theirs = randomise_batchnorm(resnet.PreActResNet(getattr(resnet, block), [2, 2, 2, 2], bn_before_fc=True))
    ours = PreActResNet18(shortcut_from=shortcut_from)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


# --- the rest of the zoo, through the robustbench package (where the extra is installed) ----------------------

# Four architectures RobustBench builds itself (none of them native here), on two datasets.
PACKAGE_ENTRIES = [
    ("cifar10", "Linf", "Ding2020MMA"),                 # WideResNet-28-4
    ("cifar10", "Linf", "Sehwag2021Proxy_R18"),         # ResNet-18
    ("cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm"),  # DeepMind's PreAct ResNet-18 (SiLU, normalising)
    ("cifar100", "Linf", "Rice2020Overfitting"),        # PreAct ResNet-18, 100 classes
]


@pytest.mark.determinism
@pytest.mark.parametrize("dataset,threat,name", PACKAGE_ENTRIES)
def test_zoo_entries_load_offline_as_robustbench_loads_them(tmp_path, robustbench_package, dataset, threat, name):
    import sys

    assert (dataset, threat, name) not in ENTRIES
    torch.manual_seed(5)
    saved = randomise_batchnorm(robustbench_model(robustbench_package, name, dataset, threat))
    save_robustbench_style(saved.state_dict(), checkpoint_path(tmp_path, dataset, threat, name))
    had_autoattack = "autoattack" in sys.modules
    ours, provenance = load_classifier(f"robustbench:{name}", **SHAPE, model_dir=tmp_path, dataset=dataset,
                                       threat_model=threat)
    assert ("autoattack" in sys.modules) == had_autoattack  # the alias lasts only while robustbench imports
    theirs = robustbench_package[2].load_model(model_name=name, model_dir=str(tmp_path), dataset=dataset,
                                                threat_model=threat)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits = ours(x)
        # the same class, the same weights, the same input shapes in this process: the same kernels, bit for bit
        assert torch.equal(logits, theirs(x)) and torch.equal(logits, saved(x))
    assert logits.shape == (3, 10 if dataset == "cifar10" else 100) and logits.std(0).min() > 0
    assert not ours.training and provenance["pretrained"] is True and provenance["dataset"] == dataset


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("a checkpoint ran code",))


def test_a_zoo_checkpoint_that_would_run_code_is_refused(tmp_path, robustbench_package, capsys):
    dataset, threat, name = PACKAGE_ENTRIES[0]
    state = robustbench_model(robustbench_package, name, dataset, threat).state_dict()
    path = checkpoint_path(tmp_path, dataset, threat, name)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "extra": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):  # torch >= 2.6 reads weights only by default
        load_classifier(f"robustbench:{name}", **SHAPE, model_dir=tmp_path, dataset=dataset, threat_model=threat)
    assert "ran code" not in capsys.readouterr().out
