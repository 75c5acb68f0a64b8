"""Activation sparsity (ProSparse): ReLU/FATReLU substitution in FFNs, sine-staged L1
regularization, threshold search and per-layer measurement. The HF model helpers live in
`activation.hf` and the embedding distillation loop in `activation.train_embedder` (they import
transformers, so they are not imported here)."""

from .measure import (
    ActivationSparsity,
    LayerSparsity,
    ZeroCounter,
    measure_activation_sparsity,
    plot_activation_sparsity,
)
from .regularize import L1Collector, SineStages, masked_mean_abs, sine_staged_lambda
from .relu import (
    ActivationSite,
    FATReLU,
    fatrelu_modules,
    find_activation_sites,
    set_threshold,
    substitute_activations,
)
from .threshold import ThresholdSearch, search_threshold

__all__ = [
    "ActivationSite",
    "ActivationSparsity",
    "FATReLU",
    "L1Collector",
    "LayerSparsity",
    "SineStages",
    "ThresholdSearch",
    "ZeroCounter",
    "fatrelu_modules",
    "find_activation_sites",
    "masked_mean_abs",
    "measure_activation_sparsity",
    "plot_activation_sparsity",
    "search_threshold",
    "set_threshold",
    "sine_staged_lambda",
    "substitute_activations",
]
