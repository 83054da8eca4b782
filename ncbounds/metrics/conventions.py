"""Named conventions for collapse metrics (the "Metrics" section of ``docs/architecture.md``).

The canonical mode is the default and is what reports show. The other modes reproduce the choices
of specific papers or code bases, so numbers can be compared with published figures. Each field is
one choice; the docstring of each mode says which paper/code it reproduces and what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ncbounds.errors import UsageError


@dataclass(frozen=True)
class Convention:
    """One set of choices for the collapse metrics.

    Attributes
    ----------
    name: mode name.
    nc1_divide_by_classes: NC1 = Tr(Σ_W Σ_B⁺)/K if True (Papyan et al. 2020 paper, Fig. 6),
        Tr(Σ_W Σ_B⁺) if False (Papyan's notebook, He & Su's D).
    between_divisor: 'classes' → Σ_B = M̃ᵀM̃/K; 'dimension' → Σ_B = M̃ᵀM̃/d (rhubarbwu's
        ``covariance_pinv`` and ``covariance_ratio``), which multiplies NC1 and the trace ratio by d/K.
    nc1_frequency_weighted: NC1's between-class matrix is Σ_c (n_c/N)(μ_c − μ̄)(·)ᵀ with the sample
        mean μ̄ (He & Su 2023) instead of (1/K)M̃ᵀM̃.
    global_mean: 'class-means' → μ_G = (1/K) Σ_c μ_c (unweighted); 'samples' → μ_G = (1/N) Σ_i h_i.
    cdnv_distance_exponent: CDNV pair term (v_i + v_j)/(2‖μ_i − μ_j‖^(2e)); e = 2 is the "quartic"
        variant of early rhubarbwu code.
    std_ddof: delta degrees of freedom of the standard deviations in NC2 (1 = unbiased, as torch.std).
    nc3_squared: NC3 (Papyan) as the squared Frobenius distance (True) or its square root.
    ncc_agreement: report NC4 as agreement 1 − mismatch instead of the mismatch rate.
    nc4_use_bias: the network decision in NC4 includes the classifier bias.
    description: what the mode reproduces.
    """

    name: str
    nc1_divide_by_classes: bool = True
    between_divisor: str = "classes"
    nc1_frequency_weighted: bool = False
    global_mean: str = "class-means"
    cdnv_distance_exponent: int = 1
    std_ddof: int = 1
    nc3_squared: bool = True
    ncc_agreement: bool = False
    nc4_use_bias: bool = True
    description: str = ""

    def differences(self) -> dict[str, object]:
        """Fields that differ from the canonical mode."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("name", "description") and getattr(self, f.name) != getattr(CANONICAL, f.name)
        }


CANONICAL = Convention(
    name="canonical",
    description=(
        "Canonical: NC1 = Tr(Σ_W Σ_B⁺)/K with Σ_W = (1/N)Σ_i(h_i−μ_{y_i})(·)ᵀ, Σ_B = (1/K)M̃ᵀM̃, "
        "μ_G = mean of class means (Papyan, Han & Donoho 2020); unbiased std in NC2; squared NC3; "
        "NC4 as mismatch rate with the bias included."
    ),
)

CONVENTIONS: dict[str, Convention] = {CANONICAL.name: CANONICAL}


def register_convention(conv: Convention) -> Convention:
    """Add a named convention (used by the modes below)."""
    CONVENTIONS[conv.name] = conv
    return conv


register_convention(Convention(
    name="papyan",
    nc1_divide_by_classes=False,
    description=(
        "Papyan, Han & Donoho (2020) public notebook (get_nc_statistics): NC1 logged as "
        "trace(Sw @ inv_Sb) without /K (Sb = M̃M̃ᵀ/C, pseudo-inverse from svds(k=C−1)); μ_G = mean of "
        "class means; torch.std (unbiased) in NC2; squared NC3; NC4 = 1 − agreement with the bias."
    ),
))
register_convention(Convention(
    name="zhu",
    global_mean="samples",
    description=(
        "Zhu et al. (2021, NeurIPS) code tding1/Neural-Collapse (validate_NC.py, plot.py): μ_G is the "
        "sample mean; NC1 = trace(Σ_W pinv(Σ_B))/K; their NC2 is our nc2_etf_error_classifier and their "
        "NC3 our nc3_zhu (unsquared ETF errors, centered by the sample mean)."
    ),
))
register_convention(Convention(
    name="he-su",
    nc1_divide_by_classes=False,
    nc1_frequency_weighted=True,
    global_mean="samples",
    description=(
        "He & Su (2023, PNAS) separation fuzziness as NC1: D = Tr(SS_W SS_B⁺) with SS_W = Σ_W and "
        "SS_B = (1/N) Σ_c n_c (μ_c − μ̄)(·)ᵀ around the sample mean (repo HornHehhf/Equi-Separation, "
        "get_variation_imbalance); equals K·NC1 for balanced classes."
    ),
))
register_convention(Convention(
    name="hong-ling",
    nc1_frequency_weighted=True,
    description=(
        "Hong & Ling (2023) for imbalanced classes: NC1 = Tr(Σ_W Σ_B,w⁺)/K with the frequency-weighted "
        "Σ_B,w = Σ_c (n_c/N)(μ_c − μ̄)(·)ᵀ around the sample mean μ̄ (He & Su's SS_B; repo "
        "WanliHongC/Neural-Collapse), i.e. nc1 becomes nc1_weighted; every other metric as canonical."
    ),
))
register_convention(Convention(
    name="rhubarbwu",
    between_divisor="dimension",
    ncc_agreement=True,
    nc4_use_bias=False,
    description=(
        "rhubarbwu/neural-collapse library (measure.py): V_inter = M̃ᵀM̃/d (feature dimension, not K), "
        "NC1 = trace(pinv(V_inter) V_intra)/K and covariance_ratio therefore d/K times ours; "
        "μ_G = mean of class means (weighted=False); CDNV with dist_exp=1 as ours; NC4 reported as "
        "NCC agreement with argmax(h Wᵀ) without the bias."
    ),
))
register_convention(Convention(
    name="rhubarbwu-quartic",
    between_divisor="dimension",
    ncc_agreement=True,
    nc4_use_bias=False,
    cdnv_distance_exponent=2,
    description="As 'rhubarbwu', with the early quartic CDNV (v_i + v_j)/(2‖μ_i − μ_j‖⁴).",
))


def get_convention(name: str | Convention | None) -> Convention:
    """Look up a convention by name (None → canonical)."""
    if name is None:
        return CANONICAL
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise UsageError(
            f"unknown convention {name!r}; choose one of {', '.join(sorted(CONVENTIONS))}."
        ) from None
