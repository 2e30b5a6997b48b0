"""Image encoders, the GMM density head, the L-GMM model that joins them, and the segmenters."""

from lgmm_jax.models.backbones import BACKBONE_NAMES, create_backbone, create_classifier, feature_dim
from lgmm_jax.models.gmm import GMMHead
from lgmm_jax.models.lgmm import LGMMModel, create_lgmm
from lgmm_jax.models.segmenter import (
    SEGMENTER_NAMES,
    LGMMSegmenter,
    SoftmaxSegmenter,
    auxiliary_logits,
    create_segmenter,
)

__all__ = [
    "BACKBONE_NAMES",
    "GMMHead",
    "LGMMModel",
    "LGMMSegmenter",
    "SEGMENTER_NAMES",
    "SoftmaxSegmenter",
    "auxiliary_logits",
    "create_backbone",
    "create_classifier",
    "create_lgmm",
    "create_segmenter",
    "feature_dim",
]
