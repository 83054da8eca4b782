"""Weight quantities for norm-based bounds: certified operator norms and BatchNorm folding."""

from ncbounds.weights.folding import fold_batchnorm
from ncbounds.weights.operator_norms import (
    OperatorNorm,
    circular_conv_singular_values,
    conv_operator_norm_circular,
    conv_operator_norm_upper,
    linear_operator_norm,
)

__all__ = [
    "OperatorNorm",
    "circular_conv_singular_values",
    "conv_operator_norm_circular",
    "conv_operator_norm_upper",
    "fold_batchnorm",
    "linear_operator_norm",
]
