"""ranlib's models layer: every network of the paper behind a timm-style registry (``_registry``):
the Residual Attention Networks (``attention``), the ResNet baselines (``resnet``), the shared units
(``units``) and network (``network``), horizontal fusion (``fused``), parameter and multiply-add
counts (``complexity``), looking inside a trained model (``analysis``), and what the paper leaves
open (``choices``).

It may import only the shared top-level modules (``errors``, ``paths``, ``files``, ``options``);
every other layer builds on it (``tests/test_layout.py``).
"""

from . import attention, resnet  # noqa: F401  (registers the builders)
from ._registry import (ModelInfo, UnknownModelError, create_model, list_models, model_info, model_switches,
                        model_variants)

__all__ = ["ModelInfo", "UnknownModelError", "create_model", "list_models", "model_info", "model_switches",
           "model_variants"]
