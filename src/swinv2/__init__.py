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

# The image processor needs Pillow; the model does not. Importing it on first use keeps `import swinv2` (a
# backbone inside a detector, a training job fed tensors) free of Pillow's ~5 MiB and import time.
_PROCESSING = ("AutoImageProcessor", "Swinv2ImageProcessor")


def __getattr__(name: str):
    if name in _PROCESSING:
        from . import processing

        return getattr(processing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PROCESSING))
