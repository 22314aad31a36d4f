"""ranlib's model zoo: every network of the paper, behind a timm-style registry."""

from . import attention, resnet  # noqa: F401  (registers the builders)
from ._registry import (
                        ModelInfo,
                        UnknownModelError,
                        create_model,
                        list_models,
                        model_info,
                        model_switches,
                        model_variants,
)

__all__ = ["ModelInfo", "UnknownModelError", "create_model", "list_models", "model_info", "model_switches",
           "model_variants"]
