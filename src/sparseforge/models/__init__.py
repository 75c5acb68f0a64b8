"""Model builders by name (`create_model`) and the built-in models: CIFAR ResNets and a compact
CNN. Importing this package registers them in `MODELS`."""

from sparseforge.models import cnn, resnet  # noqa: F401  (registers the built-in models)
from sparseforge.models.cnn import CompactCNN
from sparseforge.models.factory import MODELS, create_model
from sparseforge.models.resnet import ResNet

__all__ = ["MODELS", "CompactCNN", "ResNet", "create_model"]
