"""Zoo architectures (shapes, DeepMind module names, normalisation) and safe loading by source string."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.zoo import (
    ARCHITECTURES,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    build_architecture,
    load_classifier,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)

# The 26 WRN-28-10 layers whose activations CARSO's representation is built from.
CARSO_LAYERS = [f"layer.{g}.block.{b}.conv_{c}" for g in range(3) for b in range(4) for c in range(2)] + [
    "layer.1.block.0.shortcut",
    "layer.2.block.0.shortcut",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def wrn_28_10() -> WideResNet:
    return WideResNet(depth=28, width=10, activation="silu")


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("image_size", [28, 32])
def test_small_cnn_output_shape_for_mnist_sizes(image_size):
    model = SmallCNN(in_channels=1, num_classes=10, image_size=image_size)
    assert model(torch.rand(2, 1, image_size, image_size)).shape == (2, 10)


@pytest.mark.parametrize("image_size", [32, 64])
def test_preact_resnet18_output_shape(image_size):
    model = PreActResNet18(in_channels=3, num_classes=7)
    assert model(torch.rand(2, 3, image_size, image_size)).shape == (2, 7)


@pytest.mark.parametrize(("activation", "image_size"), [("relu", 32), ("swish", 64)])
def test_wide_resnet_output_shape(activation, image_size):
    model = WideResNet(depth=16, width=1, num_classes=5, activation=activation)
    assert model(torch.rand(2, 3, image_size, image_size)).shape == (2, 5)


def test_wide_resnet_rejects_bad_depth_and_activation():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27, width=1)
    with pytest.raises(ValueError, match="relu, swish, silu"):
        WideResNet(depth=10, width=1, activation="gelu")


def test_preact_resnet18_has_the_standard_depth():
    model = PreActResNet18()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # stem + 8 blocks x 2; with the linear layer: 18 weighted layers
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)


# ---------------------------------------------------------------- DeepMind / RobustBench layout


def test_wrn_28_10_state_dict_has_the_deepmind_keys(wrn_28_10):
    state = wrn_28_10.state_dict()
    # 12 blocks x (2 batchnorms x 5 + 2 convs) + 3 shortcuts + init_conv + final batchnorm (5) + logits (2)
    assert len(state) == 155
    assert "mean" not in state and "std" not in state
    assert state["init_conv.weight"].shape == (16, 3, 3, 3)
    assert state["layer.0.block.0.shortcut.weight"].shape == (160, 16, 1, 1)
    assert state["layer.1.block.0.conv_0.weight"].shape == (320, 160, 3, 3)
    assert state["layer.2.block.3.conv_1.weight"].shape == (640, 640, 3, 3)
    assert state["layer.2.block.3.batchnorm_1.running_var"].shape == (640,)
    assert state["batchnorm.num_batches_tracked"].shape == ()
    assert state["logits.weight"].shape == (10, 640) and state["logits.bias"].shape == (10,)
    assert sum(p.numel() for p in wrn_28_10.parameters()) == pytest.approx(36.48e6, rel=0.001)


def test_wrn_28_10_has_the_26_carso_layers(wrn_28_10):
    modules = dict(wrn_28_10.named_modules())
    assert len(CARSO_LAYERS) == 26
    for name in CARSO_LAYERS:
        assert isinstance(modules[name], torch.nn.Conv2d), name
    assert "layer.0.block.1.shortcut" not in modules  # identity shortcuts have no module
    assert isinstance(modules["layer.0.block.0.relu_0"], torch.nn.SiLU)


def test_wrn_loads_a_checkpoint_that_carries_old_style_normalisation_buffers():
    source = WideResNet(depth=10, width=1)
    state = dict(source.state_dict())
    state["mean"] = torch.tensor(CIFAR_MEAN).view(3, 1, 1)  # RobustBench <= 1.1 stored (C, 1, 1) buffers
    state["std"] = torch.tensor(CIFAR_STD).view(3, 1, 1)
    target = WideResNet(depth=10, width=1)
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(target.mean.flatten(), torch.tensor(CIFAR_MEAN))
    assert target.mean.shape == (1, 3, 1, 1)


def test_wrn_stride_two_convolution_pads_right_and_bottom_only():
    block = WideResNet(depth=10, width=1).layer[1].block[0].eval()  # 16 -> 32 channels, stride 2
    with torch.no_grad():
        block.conv_0.weight.zero_()
        block.conv_0.weight[:, 0, 0, 0] = 1.0  # read only the top-left tap of channel 0
    captured = []
    block.conv_0.register_forward_hook(lambda module, inputs, output: captured.append(output))
    x = torch.rand(1, 16, 8, 8) + 0.1  # positive, so the ReLU passes it unchanged
    block(x)
    # TF "SAME" at stride 2 pads (0, 1, 0, 1): output (i, j) sees input (2i, 2j) under the top-left tap;
    # symmetric padding would shift it to (2i - 1, 2j - 1). Eval-mode BatchNorm divides by sqrt(1 + eps).
    expected = x[0, 0, ::2, ::2] / torch.sqrt(torch.tensor(1.0 + block.batchnorm_0.eps))
    assert captured[0].shape == (1, 32, 4, 4)
    torch.testing.assert_close(captured[0][0, 0], expected)


def test_wrn_projection_shortcut_sees_the_activated_input_identity_sees_the_raw_one():
    group = WideResNet(depth=16, width=1).layer[1].eval()  # block 0 projects 16 -> 32, block 1 is identity
    with torch.no_grad():
        for block in group.block:
            block.conv_1.weight.zero_()  # leaves only the shortcut path
    negative = -torch.rand(1, 16, 8, 8) - 0.1
    torch.testing.assert_close(group.block[0](negative), torch.zeros(1, 32, 4, 4))  # ReLU zeroed it first
    raw = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(group.block[1](raw), raw)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [("small_cnn", 1, 28), ("preact_resnet18", 3, 32), ("wide_resnet_28_10", 3, 32)],
)
def test_models_normalise_their_inputs(name, channels, size):
    mean, std = CIFAR_MEAN[:channels], CIFAR_STD[:channels]
    if name == "wide_resnet_28_10":  # a narrow model of the same class keeps the test fast
        normalised, identity = WideResNet(10, 1, mean=mean, std=std), WideResNet(10, 1)
    else:
        shape = {"in_channels": channels, "num_classes": 10, "image_size": size}
        normalised = build_architecture(name, **shape, mean=mean, std=std)
        identity = build_architecture(name, **shape)
    identity.load_state_dict(normalised.state_dict())
    normalised.eval(), identity.eval()
    assert (
        normalised.mean.shape == (1, channels, 1, 1) and identity.std.flatten().tolist() == [1.0] * channels
    )
    x = torch.rand(2, channels, size, size)
    scaled = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(normalised(x), identity(scaled))
    assert not torch.allclose(normalised(x), identity(x))


def test_normalisation_rejects_wrong_channel_counts():
    with pytest.raises(ValueError, match="3 values but the model has 1 input channels"):
        SmallCNN(in_channels=1, mean=CIFAR_MEAN)


# ---------------------------------------------------------------- registry


def test_registry_builds_every_architecture_setting():
    assert set(ARCHITECTURES) == {
        "small_cnn", "preact_resnet18", "wide_resnet_28_10", "wide_resnet_34_10", "wide_resnet_70_16",
        "trades_wide_resnet",
    }  # fmt: skip
    model = build_architecture(
        "wide_resnet_34_10",
        in_channels=3,
        num_classes=100,
        image_size=32,
        mean=None,
        std=None,
        activation="swish",
    )
    assert isinstance(model, WideResNet) and (model.depth, model.width) == (34, 10)
    assert model.logits.out_features == 100 and isinstance(model.relu, torch.nn.SiLU)
    assert len(model.layer[2].block) == 5


def test_unknown_architecture_names_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'wide_resnet_28_10'") as error:
        build_architecture("wide_resnet_28_01", in_channels=3, num_classes=10, image_size=32)
    assert "preact_resnet18" in str(error.value)


def test_bad_architecture_parameters_are_reported():
    with pytest.raises(ValueError, match="bad parameters \\['depth'\\]"):
        build_architecture("preact_resnet18", in_channels=3, num_classes=10, image_size=32, depth=34)


# ---------------------------------------------------------------- load_classifier


SHAPE = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": (0.1307,), "std": (0.3081,)}


def _trained_small_cnn() -> SmallCNN:
    model = SmallCNN(1, 10, 28, mean=(0.1307,), std=(0.3081,))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    return model.eval()


def test_train_source_builds_a_fresh_model_in_eval_mode():
    model, provenance = load_classifier("train:small_cnn", **SHAPE)
    assert isinstance(model, SmallCNN) and not model.training
    assert provenance == {"source": "train:small_cnn", "arch": "small_cnn", "pretrained": False}
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.1307]))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_file_source_round_trips_weights(tmp_path, suffix):
    original = _trained_small_cnn()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path)
    loaded, provenance = load_classifier(f"file:{path}", arch="small_cnn", **SHAPE)
    assert provenance == {
        "source": f"file:{path}",
        "arch": "small_cnn",
        "pretrained": True,
        "path": str(path),
    }
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), original(x))


@pytest.mark.parametrize("wrapper_key", ["state_dict", "model_state_dict"])
def test_file_source_unwraps_training_checkpoints_and_dataparallel_prefixes(tmp_path, wrapper_key):
    original = _trained_small_cnn()
    prefixed = {f"module.{key}": value for key, value in original.state_dict().items()}
    path = tmp_path / "checkpoint.ckpt"
    torch.save({wrapper_key: prefixed, "epoch": 3}, path)
    loaded, _ = load_classifier(f"file:{path}", arch="small_cnn", **SHAPE)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), original(x))


class NotWeights:
    """A custom object: unpickling it would need arbitrary code, so weights-only loading must refuse it."""

    def __init__(self):
        self.payload = torch.zeros(3)


def test_file_source_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": NotWeights()}, path)
    with pytest.raises(ValueError, match="not a weights-only checkpoint") as error:
        load_classifier(f"file:{path}", arch="small_cnn", **SHAPE)
    assert "safetensors" in str(error.value) and "execute code" in str(error.value)


def test_file_source_refuses_unknown_extensions(tmp_path):
    path = tmp_path / "weights.bin"
    torch.save(_trained_small_cnn().state_dict(), path)
    with pytest.raises(ValueError, match="unsupported extension '.bin'.*safetensors"):
        load_classifier(f"file:{path}", arch="small_cnn", **SHAPE)


def test_file_source_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_classifier(f"file:{missing}", arch="small_cnn", **SHAPE)
    with pytest.raises(ValueError, match="needs arch="):
        load_classifier(f"file:{missing}", **SHAPE)
    wrong = tmp_path / "wrong.pt"
    torch.save(PreActResNet18(1, 10).state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit architecture 'small_cnn'"):
        load_classifier(f"file:{wrong}", arch="small_cnn", **SHAPE)
    scalars = tmp_path / "scalars.pt"
    torch.save({"weight": torch.zeros(1), "note": "hello"}, scalars)
    with pytest.raises(ValueError, match="not a plain state_dict"):
        load_classifier(f"file:{scalars}", arch="small_cnn", **SHAPE)


@pytest.mark.parametrize("source", ["hub:resnet18", "small_cnn", "file:"])
def test_unknown_source_forms_are_refused(source):
    with pytest.raises(ValueError, match="train:<arch>, file:<path>, robustbench:<name>"):
        load_classifier(source, arch="small_cnn", **SHAPE)


def test_robustbench_source_without_the_package_explains_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # makes the import fail even if installed
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError, match=r"-e '\.\[robustbench\]'"):
        load_classifier("robustbench:Wang2023Better_WRN-28-10", **SHAPE)


def test_robustbench_source_passes_its_arguments_through(monkeypatch):
    calls = []

    def fake_load_model(**kwargs):
        calls.append(kwargs)
        return WideResNet(depth=10, width=1).train()

    package, utils = types.ModuleType("robustbench"), types.ModuleType("robustbench.utils")
    utils.load_model = fake_load_model
    package.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    model, provenance = load_classifier(  # a name without a native architecture goes to the package
        "robustbench:Wang2023Better_WRN-28-10", **SHAPE, dataset="cifar100", model_dir=Path("/tmp/m")
    )
    assert calls == [
        {
            "model_name": "Wang2023Better_WRN-28-10",
            "model_dir": "/tmp/m",
            "dataset": "cifar100",
            "threat_model": "Linf",
        }
    ]
    assert not model.training
    assert provenance["pretrained"] is True and provenance["name"] == "Wang2023Better_WRN-28-10"
    load_classifier("robustbench:Gowal2020Uncovering_28_10_extra", **SHAPE)
    assert calls[-1]["model_dir"] == "./models" and calls[-1]["dataset"] == "cifar10"
