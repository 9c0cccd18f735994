"""Imports every architecture family so that its @register decorators run (in listing order)."""

from cnnctl.models import (
    resnet,  # noqa: F401
    speedrun,  # noqa: F401
    tutorials,  # noqa: F401  (first: the tutorial nets lead the listing)
)
from cnnctl.models.torchvision_models import torchvision_entry

__all__ = ["torchvision_entry"]
