"""swinv2: a fast, faithful Swin Transformer V2 for PyTorch."""

from .config import Swinv2Config
from .determinism import set_deterministic
from .errors import Swinv2Error
from .modeling import (
    BackboneOutput,
    Swinv2Backbone,
    Swinv2ForImageClassification,
    Swinv2ForMaskedImageModeling,
    Swinv2ImageClassifierOutput,
    Swinv2MaskedImageModelingOutput,
    Swinv2Model,
    Swinv2ModelOutput,
    Swinv2PreTrainedModel,
)
from .processing import AutoImageProcessor, Swinv2ImageProcessor

__version__ = "0.1.0"

__all__ = [
    "AutoImageProcessor",
    "BackboneOutput",
    "Swinv2Backbone",
    "Swinv2Config",
    "Swinv2Error",
    "Swinv2ForImageClassification",
    "Swinv2ForMaskedImageModeling",
    "Swinv2ImageClassifierOutput",
    "Swinv2ImageProcessor",
    "Swinv2MaskedImageModelingOutput",
    "Swinv2Model",
    "Swinv2ModelOutput",
    "Swinv2PreTrainedModel",
    "__version__",
    "set_deterministic",
]
