"""Built-in architectures and architecture specs (ncbounds.models)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from ncbounds.errors import UsageError
from ncbounds.models import (
    BUILTIN_ARCHITECTURES,
    CNN1D,
    MLP,
    LeNet5,
    ResNet18CIFAR,
    build_model,
    list_architectures,
    parse_kv,
)


def _penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.fc.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["h"]


# ----------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "model, x, d",
    [
        (MLP(), torch.randn(5, 64), 128),
        (MLP(input_dim=64, width=16, depth=2), torch.randn(5, 8, 8), 16),
        (MLP(input_dim=40, depth=0, num_classes=3), torch.randn(5, 40), 40),
        (CNN1D(), torch.randn(5, 40), 32),
        (CNN1D(channels=8, depth=2), torch.randn(5, 1, 40), 8),
        (LeNet5(), torch.randn(5, 1, 28, 28), 84),
        (LeNet5(input_size=8), torch.randn(5, 64), 84),
        (LeNet5(input_size=8), torch.randn(5, 8, 8), 84),
        (LeNet5(in_channels=3, input_size=32), torch.randn(5, 3, 32, 32), 84),
        (ResNet18CIFAR(width=8), torch.randn(3, 3, 32, 32), 64),
    ],
)
def test_forward_shapes_and_penultimate(model, x, d):
    out = model.eval()(x)
    assert out.shape == (x.shape[0], model.fc.out_features)
    assert isinstance(model.fc, nn.Linear)
    assert list(model.named_children())[-1][0] == "fc"
    assert _penultimate(model, x).shape == (x.shape[0], d)


def test_resnet18_default_layout():
    model = ResNet18CIFAR()
    names = dict(model.named_modules())
    assert model.fc.in_features == 512 and model.fc.out_features == 10
    assert isinstance(names["conv1"], nn.Conv2d) and names["conv1"].kernel_size == (3, 3)
    assert names["conv1"].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        assert len(names[layer]) == 2
    assert "layer2.0.downsample.0" in names and "layer1.0.downsample" not in names
    n_params = sum(p.numel() for p in model.parameters())
    assert 11_100_000 < n_params < 11_200_000  # the usual 11.17M of CIFAR ResNet-18


def test_meaningful_module_names():
    names = [n for n, _ in MLP(depth=2).named_modules()]
    assert names == ["", "features", "features.0", "features.1", "features.2", "features.3", "fc"]
    lenet = dict(LeNet5().named_modules())
    for key in ("conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "act4", "fc"):
        assert key in lenet


@pytest.mark.parametrize(
    "factory, kwargs",
    [(MLP, {"depth": -1}), (MLP, {"width": 0}), (CNN1D, {"depth": 0}), (LeNet5, {"input_size": 3})],
)
def test_invalid_constructor_values(factory, kwargs):
    with pytest.raises(ValueError):
        factory(**kwargs)


# ----------------------------------------------------------------------------- parse_kv


def test_parse_kv_types():
    got = parse_kv("a=1, b=2.5,c=true,d=False,e=none,f=hello,g=1e-3,h=[1,2],i='x,y',j=(3,)")
    assert got == {
        "a": 1,
        "b": 2.5,
        "c": True,
        "d": False,
        "e": None,
        "f": "hello",
        "g": 1e-3,
        "h": [1, 2],
        "i": "x,y",
        "j": (3,),
    }
    assert isinstance(got["a"], int) and isinstance(got["b"], float)
    assert parse_kv("") == {} and parse_kv(None) == {}


@pytest.mark.parametrize("bad", ["width", "width=1,width=2", "1x=3", "a=[1,2"])
def test_parse_kv_errors(bad):
    with pytest.raises(UsageError) as err:
        parse_kv(bad)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- build_model


def test_builtin_specs_and_kwargs_precedence():
    m = build_model("mlp:width=32,depth=2", {"width": 8, "num_classes": 3})
    assert isinstance(m, MLP)
    assert m.features[0].out_features == 32  # inline wins
    assert m.fc.out_features == 3  # dict kwargs still used
    assert len(m.features) == 4
    assert isinstance(build_model("MLP"), MLP)
    assert isinstance(build_model("resnet18_cifar:width=4"), ResNet18CIFAR)
    assert isinstance(build_model("cnn1d", {"channels": 4}), CNN1D)
    assert isinstance(build_model("lenet5:input_size=8"), LeNet5)
    assert list(list_architectures()) == list(BUILTIN_ARCHITECTURES)
    assert all("(" in v for v in list_architectures().values())


def test_unknown_builtin_lists_known_names():
    with pytest.raises(UsageError) as err:
        build_model("resnet50")
    msg = str(err.value)
    assert "resnet50" in msg and all(name in msg for name in BUILTIN_ARCHITECTURES)
    assert "\n" not in msg


def test_bad_builtin_kwargs():
    with pytest.raises(UsageError) as err:
        build_model("mlp:widht=3")
    msg = str(err.value)
    assert "mlp:widht=3" in msg and "widht" in msg and "width" in msg and "\n" not in msg
    with pytest.raises(UsageError) as err:
        build_model("mlp:depth=-2")
    assert "depth" in str(err.value) and "\n" not in str(err.value)


USER_FILE = textwrap.dedent(
    """
    from torch import nn
    from helper_mod import HIDDEN

    class Net(nn.Module):
        def __init__(self, num_classes=10, width=HIDDEN):
            super().__init__()
            self.body = nn.Linear(4, width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(self.body(x))

    def make(width=5):
        return Net(num_classes=2, width=width)

    def broken(**kw):
        raise RuntimeError("boom\\nsecond line")

    def not_a_model():
        return 3
    """
)


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "helper_mod.py").write_text("HIDDEN = 7\n")
    (tmp_path / "archs.py").write_text(USER_FILE)
    return tmp_path


def test_file_factory(user_dir, monkeypatch):
    m = build_model(str(user_dir / "archs.py") + ":Net")
    assert m.fc.in_features == 7
    m = build_model("archs.py:Net:width=3", {"num_classes": 4, "width": 9}, base_dir=str(user_dir))
    assert m.fc.in_features == 3 and m.fc.out_features == 4
    m = build_model("archs.py:make", base_dir=str(user_dir))
    assert m.fc.out_features == 2
    monkeypatch.chdir(user_dir)
    assert build_model("./archs.py:make:width=6").fc.in_features == 6


def test_file_factory_errors(user_dir):
    base = str(user_dir)
    cases = {
        "archs.py:Missing": ["Missing", "Net"],
        "archs.py:broken": ["archs.py:broken", "boom"],
        "archs.py:Net:depth=3": ["depth", "width"],
        "archs.py:not_a_model": ["not a torch.nn.Module"],
        "nope.py:Net": ["does not exist"],
        "archs.py": ["ClassName"],
    }
    for spec, needles in cases.items():
        with pytest.raises(UsageError) as err:
            build_model(spec, base_dir=base)
        msg = str(err.value)
        assert "\n" not in msg, spec
        for needle in needles:
            assert needle in msg, (spec, msg)


def test_file_that_fails_to_import(tmp_path):
    (tmp_path / "bad.py").write_text("raise ImportError('no such thing')\n")
    with pytest.raises(UsageError, match="failed to import"):
        build_model("bad.py:Net", base_dir=str(tmp_path))


def test_module_factory(user_dir, monkeypatch):
    assert isinstance(build_model("torch.nn:Identity"), nn.Identity)
    m = build_model("torch.nn:Linear:in_features=3,out_features=2")
    assert isinstance(m, nn.Linear) and m.out_features == 2
    monkeypatch.syspath_prepend(str(user_dir))
    m = build_model("archs:make", {"width": 4})
    assert m.fc.in_features == 4
    with pytest.raises(UsageError, match="cannot be imported"):
        build_model("no_such_pkg_xyz.models:Net")
    with pytest.raises(UsageError, match="has no `Nope`"):
        build_model("torch.nn:Nope")


def test_module_factory_base_dir_fallback(tmp_path):
    pkg = tmp_path / "mypkg_ncb_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("from torch import nn\ndef tiny():\n    return nn.Linear(2, 2)\n")
    try:
        m = build_model("mypkg_ncb_test.nets:tiny", base_dir=str(tmp_path))
        assert isinstance(m, nn.Linear)
        assert str(tmp_path) not in sys.path
    finally:
        for name in ("mypkg_ncb_test", "mypkg_ncb_test.nets"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("pkg", ["torchvision", "timm"])
def test_external_packages(pkg):
    import importlib.util

    if importlib.util.find_spec(pkg) is None:
        with pytest.raises(UsageError, match=f"needs `pip install {pkg}`"):
            build_model(f"{pkg}:resnet18")
    else:  # pragma: no cover - depends on the environment
        model = build_model(f"{pkg}:resnet18", {"num_classes": 3})
        assert isinstance(model, nn.Module)


def test_empty_spec():
    with pytest.raises(UsageError):
        build_model("  ")
