"""Certified operator (spectral) norms of linear and convolutional layers, for the norm-based bounds.

Every function returns an :class:`OperatorNorm` whose ``value`` is an UPPER bound on the largest
singular value of the layer's linear map (bias excluded), never an estimate from below:
reshaped-matrix norms ``‖W.reshape(c_out, -1)‖₂`` can under- or over-estimate a convolution's
norm, and power iteration converges from below, so neither is used here.

Conventions
-----------
- Weights are read in float64 (torch tensors or numpy arrays); the layer is the PyTorch
  cross-correlation ``y[o, j] = Σ_{c, t} w[o, c, t] · x_pad[c, j·s + t·d]`` with weight shape
  ``(c_out, c_in / groups, k_1, …, k_D)``, D ∈ {1, 2, 3}.
- ``input_shape`` is the spatial shape ``(n_1, …, n_D)`` of one input (a leading channel dimension
  equal to c_in is accepted and dropped).
- ``exact=True`` means the value is the largest singular value up to floating-point rounding
  (plus the stated rounding margin); ``exact=False`` means a certified upper bound.

Reference: Sedghi, Gupta & Long (2019), "The Singular Values of Convolutional Layers", ICLR,
Theorem 6 (singular values of a multi-channel circular convolution = union over the DFT
frequencies of the singular values of the c_out × c_in matrices of kernel DFT coefficients).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "OperatorNorm",
    "circular_conv_singular_values",
    "conv_operator_norm_circular",
    "conv_operator_norm_upper",
    "linear_operator_norm",
]

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class OperatorNorm:
    """A (certified upper bound on an) operator norm.

    ``value``: the bound (float); ``method``: how it was computed ('exact-svd',
    'fft-circular-exact', 'fft-circular-embedding'); ``exact``: True when ``value`` is the norm
    itself (up to rounding), False when it is only an upper bound.
    """

    value: float
    method: str
    exact: bool


def _to_float64(weight: Any) -> np.ndarray:
    if isinstance(weight, torch.Tensor):
        arr = weight.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(weight, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("weight contains NaN or inf; an operator norm needs finite weights")
    return arr


def linear_operator_norm(weight: Any) -> OperatorNorm:
    """Spectral norm ‖W‖₂ = σ_max(W) of a Linear weight of shape (out, in), by SVD in float64.

    Formula: σ_max(W) = max_{‖x‖₂=1} ‖Wx‖₂, computed with ``torch.linalg.matrix_norm(W, ord=2)``
    (LAPACK SVD; backward-stable, relative error O(ε·min(out, in))). Method 'exact-svd', exact.

    Reference: Bartlett, Foster & Telgarsky (2017), "Spectrally-normalized margin bounds for neural
    networks", NeurIPS (s_i = ‖A_i‖_σ in Thm 1.1); Golub & Van Loan, Matrix Computations, §2.3.
    """
    w = _to_float64(weight)
    if w.ndim != 2:
        raise ValueError(f"a Linear weight must be 2-D (out, in); got shape {tuple(w.shape)}")
    if w.size == 0:
        return OperatorNorm(0.0, "exact-svd", True)
    value = float(torch.linalg.matrix_norm(torch.from_numpy(w), ord=2))
    return OperatorNorm(value, "exact-svd", True)


def _tuple(x: int | Sequence[int], d: int, name: str) -> tuple[int, ...]:
    if isinstance(x, (int, np.integer)):
        out = (int(x),) * d
    else:
        out = tuple(int(v) for v in x)
    if len(out) != d:
        raise ValueError(f"{name} must be an int or a {d}-tuple; got {x!r}")
    return out


def _conv_geometry(weight: np.ndarray, input_shape: int | Sequence[int], groups: int
                   ) -> tuple[int, tuple[int, ...]]:
    d = weight.ndim - 2
    if d not in (1, 2, 3):
        raise ValueError(
            f"a conv weight must have shape (c_out, c_in/groups, k_1..k_D), D in 1..3; "
            f"got shape {tuple(weight.shape)}"
        )
    c_out, c_in_g = weight.shape[:2]
    if groups < 1 or c_out % groups != 0:
        raise ValueError(f"groups={groups} must be >= 1 and divide c_out={c_out}")
    shape = (int(input_shape),) if isinstance(input_shape, (int, np.integer)) else tuple(
        int(v) for v in input_shape
    )
    if len(shape) == d + 1:
        if shape[0] != c_in_g * groups:
            raise ValueError(
                f"input_shape {shape} has {shape[0]} channels but the weight expects "
                f"{c_in_g * groups}; pass the spatial shape only"
            )
        shape = shape[1:]
    if len(shape) != d or min(shape) < 1:
        raise ValueError(
            f"input_shape must be the {d}-D spatial shape of one input; got {input_shape!r}"
        )
    return d, shape


def _padding_pairs(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]
                   ) -> tuple[tuple[int, int], ...]:
    """(left, right) zero padding per spatial dim, PyTorch conventions ('same': odd unit right)."""
    d = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * d
        if padding == "same":
            pairs = []
            for k, dil in zip(kernel, dilation, strict=True):
                total = dil * (k - 1)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid'; got {padding!r}")
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * d
    items = list(padding)
    if len(items) == d and all(isinstance(p, (int, np.integer)) for p in items):
        return tuple((int(p), int(p)) for p in items)
    if len(items) == d and all(len(p) == 2 for p in items):
        return tuple((int(p[0]), int(p[1])) for p in items)
    raise ValueError(f"padding must be an int, a {d}-tuple of ints or of (left, right) pairs; "
                     f"got {padding!r}")


def _kernel_dft(w: np.ndarray, grid: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                half: bool, device: Any = None) -> torch.Tensor:
    """Per-frequency channel matrices, shape (groups, *freq_grid, c_out/groups, c_in/groups), complex128.

    Tap t of the (dilated) kernel sits at grid position t·dilation mod N (taps that alias are
    summed, which is what a circular convolution on a grid smaller than the kernel does). With
    ``half`` only the non-negative frequencies of the last axis are kept (rfft): for a real kernel
    Ŵ(−ω) = conj(Ŵ(ω)) has the same singular values. Computed with ``torch.fft`` on ``device``.
    """
    c_out, c_in_g = w.shape[:2]
    d = len(grid)
    wt = torch.as_tensor(w, dtype=torch.float64, device=device)
    arr = torch.zeros((c_out, c_in_g) + tuple(grid), dtype=torch.float64, device=device)
    for tap in itertools.product(*[range(k) for k in w.shape[2:]]):
        pos = tuple((t * dil) % n for t, dil, n in zip(tap, dilation, grid, strict=True))
        arr[(slice(None), slice(None)) + pos] += wt[(slice(None), slice(None)) + tap]
    dims = tuple(range(2, 2 + d))
    f = torch.fft.rfftn(arr, dim=dims) if half else torch.fft.fftn(arr, dim=dims)
    freq_shape = tuple(f.shape[2:])
    f = f.reshape((groups, c_out // groups, c_in_g) + freq_shape)
    return f.permute((0,) + tuple(range(3, 3 + d)) + (1, 2))


def _max_singular_value(mats: torch.Tensor) -> float:
    """Upper bound (to float64 rounding) on max σ_max over a batch of matrices (..., m, n).

    σ_max(A)² = λ_max(G) with G the smaller Gram matrix (A·Aᴴ or Aᴴ·A); ``eigvalsh`` of G costs a
    fraction of an SVD. Rounding: forming G in floating point errs by at most γ_c·‖ |A| ‖²_F ≤
    c·ε·‖A‖²_F per entry sum (Higham 2002, §3.5, c the inner dimension), and the symmetric eigensolver
    is backward stable (error O(c·ε·‖G‖₂) ≤ O(c·ε·‖A‖²_F)); the returned value is
    √(λ̂_max + 8·(c + 8)·ε·max‖A‖²_F), so it is never below the exact σ_max of the given matrices.
    """
    if mats.numel() == 0:
        return 0.0
    m, n = mats.shape[-2], mats.shape[-1]
    a = mats.reshape(-1, m, n)
    gram = a @ a.mH if m <= n else a.mH @ a
    lam = float(torch.linalg.eigvalsh(gram)[:, -1].max())
    fro_sq = float(gram.diagonal(dim1=-2, dim2=-1).real.sum(-1).max())  # ‖A‖²_F = tr G (rounding: same order)
    return math.sqrt(max(lam, 0.0) + 8.0 * (max(m, n) + 8) * _EPS * fro_sq)


def _strided_sigma_max(w: np.ndarray, grid: tuple[int, ...], dilation: tuple[int, ...],
                       groups: int, stride: tuple[int, ...], device: Any = None) -> float:
    """Exact norm of S∘C: the circular conv C on ``grid`` followed by subsampling by ``stride``.

    Requires N_i = s_i·M_i. Polyphase (aliasing) identity: with unitary DFTs, the output coefficient
    at ω' ∈ Π{0..M_i−1} is Π s_i^{−1/2} · Σ_k P(ω' + k∘M) x̂(ω' + k∘M), k ∈ Π{0..s_i−1}; every input
    frequency belongs to exactly one ω'. So S∘C is block-diagonal over ω' with blocks
    B(ω') = (Π s_i)^{−1/2}·[P(ω' + k∘M)]_k of shape c_out/g × (Π s_i)·c_in/g, and
    ‖S∘C‖ = max_{g, ω'} σ_max(B(ω')). For a real kernel P(−ω) = conj P(ω), so the blocks of B(−ω')
    are the conjugated blocks of B(ω') in the order k ↦ (s − k) mod s: same singular values. Only
    ω' with last coordinate in 0..⌊M_D/2⌋ are therefore evaluated.
    """
    d = len(grid)
    m = tuple(n // si for n, si in zip(grid, stride, strict=True))
    f = _kernel_dft(w, grid, dilation, groups, half=False, device=device)  # (g, N_1..N_D, og, ig)
    g, og, ig = f.shape[0], f.shape[-2], f.shape[-1]
    split = [g]
    for si, mi in zip(stride, m, strict=True):
        split += [si, mi]  # ω = k·M + ω'  (k major)
    f = f.reshape(tuple(split) + (og, ig))
    f = f[..., : m[-1] // 2 + 1, :, :]  # ω'_D ∈ 0..⌊M_D/2⌋ (conjugate symmetry, see above)
    m_kept = m[:-1] + (m[-1] // 2 + 1,)
    k_axes = [1 + 2 * i for i in range(d)]
    w_axes = [2 + 2 * i for i in range(d)]
    # -> (g, M_1..M_D, og, s_1..s_D, ig) -> blocks (g, M..., og, S·ig)
    f = f.permute([0] + w_axes + [1 + 2 * d] + k_axes + [2 + 2 * d])
    blocks = f.reshape((g,) + m_kept + (og, int(np.prod(stride)) * ig))
    return _max_singular_value(blocks) / math.sqrt(float(np.prod(stride)))


def _rounding_margin(w: np.ndarray, grid: tuple[int, ...], sigma: float, stride_prod: int = 1
                     ) -> float:
    """Absolute error allowance for the FFT in float64 (plus an O(ε·√c·σ) slack).

    FFT (Higham 2002, Accuracy and Stability of Numerical Algorithms, 2nd ed., §24.1, error bound
    of the Cooley–Tukey FFT): the computed DFT of each
    (o, c) kernel has 2-norm error ≲ η·log₂N·√N·‖w_oc‖₂ over all N frequencies, hence every
    per-frequency matrix has spectral error ≤ η·log₂N·√N·‖w‖_F. We take η = 16ε. The eigenvalue
    step's own allowance is already inside :func:`_max_singular_value`; the 16ε·√c·σ term (the
    allowance of an SVD, used before) is kept as extra slack.
    """
    n_total = int(np.prod(grid))
    fro = float(np.linalg.norm(w.ravel()))
    c = max(w.shape[0], w.shape[1] * stride_prod)  # widest per-frequency matrix
    return 16.0 * _EPS * ((math.log2(max(n_total, 2)) + 1.0) * math.sqrt(n_total) * fro
                          + math.sqrt(c) * sigma)


def circular_conv_singular_values(weight: Any, grid_shape: int | Sequence[int],
                                  dilation: int | Sequence[int] = 1, groups: int = 1) -> np.ndarray:
    """All singular values of the circular (periodic) convolution on a grid of the given shape.

    Formula (Sedghi, Gupta & Long 2019, ICLR, Thm 6): for the map x ↦ y,
    y[o, j] = Σ_{c,t} w[o, c, t]·x[c, (j + t·d) mod N], the singular values are the union over the
    frequencies ω ∈ Π_i {0, …, N_i − 1} of the singular values of P(ω)[o, c] = Σ_t w[o, c, t]·
    exp(−2πi⟨ω, t·d / N⟩) (c_out × c_in matrices; the sign of the exponent is immaterial). Groups
    make the operator block-diagonal, so the union is also over groups.

    Returns an array of shape (groups, *grid_shape, min(c_out/groups, c_in/groups)), each row sorted
    in decreasing order (a permutation of rows/shift of the grid does not change singular values).
    """
    w = _to_float64(weight)
    d, grid = _conv_geometry(w, grid_shape, groups)
    dil = _tuple(dilation, d, "dilation")
    mats = _kernel_dft(w, grid, dil, groups, half=False)
    return torch.linalg.svdvals(mats).numpy()


def conv_operator_norm_circular(weight: Any, input_shape: int | Sequence[int],
                                dilation: int | Sequence[int] = 1, groups: int = 1, *,
                                device: Any = None) -> OperatorNorm:
    """Exact spectral norm of a stride-1 circular convolution on inputs of spatial shape n.

    This is the operator of ``nn.ConvND(padding_mode='circular', padding='same', stride=1)`` (or any
    symmetric padding with 2·p_i = d_i·(k_i − 1)): its output is a circular shift of the periodic
    correlation on the n-grid, so its singular values are those of
    :func:`circular_conv_singular_values` and the norm is their maximum over frequencies and groups.
    Method 'fft-circular-exact', exact (value includes float64 rounding margins: ~1e-13 relative for
    the FFT, see ``_rounding_margin``, and at most ~1e-10 relative for the eigenvalue step at 512
    channels, see ``_max_singular_value``).

    ``device``: where the FFT and the eigenvalue problems run (default CPU); the value does not
    depend on it beyond float64 rounding.

    Reference: Sedghi, Gupta & Long (2019), ICLR, Thm 6.
    """
    w = _to_float64(weight)
    d, grid = _conv_geometry(w, input_shape, groups)
    dil = _tuple(dilation, d, "dilation")
    sigma = _max_singular_value(_kernel_dft(w, grid, dil, groups, half=True, device=device))
    return OperatorNorm(sigma + _rounding_margin(w, grid, sigma), "fft-circular-exact", True)


def conv_operator_norm_upper(
    weight: Any,
    input_shape: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: Any = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    grid: int | Sequence[int] | None = None,
    device: Any = None,
) -> OperatorNorm:
    """Certified upper bound on the spectral norm of a zero-padded, strided, dilated, grouped conv.

    Bound (stride 1): ‖conv‖₂ ≤ max_{g, ω} σ_max(P_g(ω)), the norm of the circular convolution
    with the same kernel on a grid N_i ≥ L_i = n_i + pl_i + pr_i (default: N_i = L_i), P_g(ω) the
    c_out/g × c_in/g matrix of kernel DFT coefficients at frequency ω of group g (Sedghi, Gupta &
    Long 2019, ICLR, Thm 6). Stride s > 1: ‖conv‖₂ ≤ ‖S∘C‖ = max_{g, ω'} σ_max(B_g(ω')), the exact
    norm of the circular conv on a grid N_i = s_i·⌈L_i/s_i⌉ followed by subsampling S, where
    B_g(ω') = (Π s_i)^{−1/2}·[P_g(ω' + k∘N/s)]_{k ∈ Π{0..s_i−1}} (polyphase/aliasing identity of
    multirate signal processing, see ``_strided_sigma_max``); it is never larger than the stride-1
    bound on the same grid (S is a coordinate projection) and often much smaller.

    Why it is an upper bound. Let L_i = n_i + pl_i + pr_i and N_i ≥ L_i. (1) Zero padding is
    E: x ↦ x placed at offset pl inside a zero grid of shape N — an isometric embedding
    (‖Ex‖ = ‖x‖). (2) For every valid stride-1 output position j (0 ≤ j_i ≤ L_i − d_i(k_i − 1) − 1)
    the taps j + t·d stay inside [0, L_i − 1] ⊂ [0, N_i − 1], so no index wraps around and the
    zero-padded conv output at j equals the circular correlation C on the N-grid at j:
    conv₁ = Π ∘ C ∘ E with Π a coordinate projection (‖Π‖ ≤ 1). (3) Stride s keeps the outputs
    j·s — another coordinate projection; when N_i is a multiple of s_i these outputs are among
    those of S∘C (positions that are multiples of s on the N-grid), so conv = Π' ∘ S ∘ C ∘ E and
    ‖conv‖ ≤ ‖S∘C‖ ≤ ‖C‖. (4) With groups, C is block-diagonal over groups (after permuting
    channels), so the norm is the max over groups. Only the total padding per dimension matters,
    so 'same' (PyTorch puts the odd unit on the right), 'valid', ints, tuples and (left, right)
    pairs are all accepted. Bias is excluded (it does not enter the Lipschitz constant).

    ``padding_mode='circular'`` is supported when 2·p_i = d_i(k_i − 1) (the 'same' case): the conv
    is then (a shift of) the circular conv on the n-grid followed by subsampling — exact for
    stride 1 and for strides dividing n (a shift multiplies the polyphase blocks by unit-modulus
    phases), an upper bound (stride ignored) otherwise. Other padding modes ('reflect',
    'replicate') are refused: their padding is not an isometry.

    A 1×1 kernel (any stride, padding or dilation) has P_g(ω) = W_g at every frequency, and every
    polyphase block is (Π s_i)^{−1/2}·[W_g … W_g], whose norm is σ_max(W_g): the same bound is then
    computed from the c_out/g × c_in/g matrices alone (no FFT).

    The value includes float64 rounding margins (``_rounding_margin``, ~1e-13 relative, and that of
    ``_max_singular_value``, ≤ ~1e-10 relative at 512 channels).
    Method 'fft-circular-embedding' (exact=False), or 'fft-circular-exact' for the exact circular
    cases above. ``device``: where the FFT and the eigenvalue problems run (default CPU).
    """
    w = _to_float64(weight)
    d, n = _conv_geometry(w, input_shape, groups)
    s = _tuple(stride, d, "stride")
    dil = _tuple(dilation, d, "dilation")
    if min(s) < 1 or min(dil) < 1:
        raise ValueError(f"stride and dilation must be >= 1; got stride={stride!r}, "
                         f"dilation={dilation!r}")
    kernel = tuple(int(k) for k in w.shape[2:])
    pads = _padding_pairs(padding, kernel, dil)
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be non-negative; got {padding!r}")
    extent = tuple(dl * (k - 1) + 1 for k, dl in zip(kernel, dil, strict=True))
    lengths = tuple(ni + pl + pr for ni, (pl, pr) in zip(n, pads, strict=True))
    if any(e > length for e, length in zip(extent, lengths, strict=True)):
        raise ValueError(
            f"the dilated kernel {extent} is larger than the padded input {lengths}: the conv "
            "output is empty"
        )

    if padding_mode == "circular":
        if any(pl + pr != e - 1 for (pl, pr), e in zip(pads, extent, strict=True)):
            raise ValueError(
                "padding_mode='circular' is supported only with total padding d*(k-1) per "
                "dimension ('same'); use padding='same'"
            )
        if all(si == 1 for si in s):
            return conv_operator_norm_circular(w, n, dil, groups, device=device)
        if all(ni % si == 0 for ni, si in zip(n, s, strict=True)):
            sigma = _strided_sigma_max(w, n, dil, groups, s, device)
            margin = _rounding_margin(w, n, sigma, int(np.prod(s)))
            return OperatorNorm(sigma + margin, "fft-circular-exact", True)
        res = conv_operator_norm_circular(w, n, dil, groups, device=device)  # stride ignored: upper bound
        return OperatorNorm(res.value, "fft-circular-embedding", False)
    if padding_mode != "zeros":
        raise ValueError(
            f"padding_mode={padding_mode!r} is not supported: only 'zeros' and 'circular' padding "
            "are isometric, so only they give a certified bound"
        )

    if all(k == 1 for k in kernel):  # P(ω) = W for every ω (see above)
        c_out, c_in_g = w.shape[:2]
        mats = torch.as_tensor(w.reshape(groups, c_out // groups, c_in_g), device=device)
        sigma = _max_singular_value(mats)
        return OperatorNorm(sigma + _rounding_margin(w, (1,) * d, sigma), "fft-circular-embedding", False)
    strided = any(si > 1 for si in s)
    if grid is None:  # smallest admissible grid: >= L_i and a multiple of s_i
        g_shape = tuple(-(-li // si) * si for li, si in zip(lengths, s, strict=True))
    else:
        g_shape = _tuple(grid, d, "grid")
        if any(gi < li for gi, li in zip(g_shape, lengths, strict=True)):
            raise ValueError(f"grid {g_shape} must be at least the padded input size {lengths}")
        if strided and any(gi % si for gi, si in zip(g_shape, s, strict=True)):
            raise ValueError(f"grid {g_shape} must be a multiple of the stride {s}")
    if strided:
        sigma = _strided_sigma_max(w, g_shape, dil, groups, s, device)
    else:
        sigma = _max_singular_value(_kernel_dft(w, g_shape, dil, groups, half=True, device=device))
    value = sigma + _rounding_margin(w, g_shape, sigma, int(np.prod(s)))
    return OperatorNorm(value, "fft-circular-embedding", False)
