"""Model construction: built-in architectures and architecture specs (``--arch``; the "Inputs" section of
``docs/architecture.md``).

``build_model(spec, kwargs=None, base_dir=None)`` turns an ``--arch`` spec into an ``nn.Module``;
every built-in ends with an ``nn.Linear`` named ``fc`` whose input is the penultimate feature.
``parse_kv``/``parse_value`` live in :mod:`ncbounds.io.kv` and are re-exported here.
"""

from ncbounds.models.builtin import CNN1D, MLP, BasicBlock, LeNet5, ResNet18CIFAR
from ncbounds.models.spec import (
    BUILTIN_ARCHITECTURES,
    ArchSpec,
    build_model,
    describe_spec,
    list_architectures,
    parse_kv,
    parse_value,
)

__all__ = [
    "BUILTIN_ARCHITECTURES",
    "ArchSpec",
    "BasicBlock",
    "CNN1D",
    "LeNet5",
    "MLP",
    "ResNet18CIFAR",
    "build_model",
    "describe_spec",
    "list_architectures",
    "parse_kv",
    "parse_value",
]
