"""Image encoders, the GMM density head, and the L-GMM model that joins them."""

from lgmm_jax.models.backbones import BACKBONE_NAMES, create_backbone, create_classifier, feature_dim
from lgmm_jax.models.gmm import GMMHead
from lgmm_jax.models.lgmm import LGMMModel, create_lgmm

__all__ = [
    "BACKBONE_NAMES",
    "GMMHead",
    "LGMMModel",
    "create_backbone",
    "create_classifier",
    "create_lgmm",
    "feature_dim",
]
