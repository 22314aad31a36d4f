"""ranlib: a reproducibility study of Residual Attention Network for Image Classification
(Wang et al., CVPR 2017)."""

from .models import ModelInfo, UnknownModelError, create_model, list_models, model_info, model_variants
from .models.complexity import complexity

__version__ = "0.1.0"
__all__ = ["ModelInfo", "UnknownModelError", "complexity", "create_model", "list_models", "model_info",
           "model_variants"]
