"""Images in, tensors out: preprocessing configs and transforms, robust image loading, datasets,
Mixup/CutMix, and the ImageNet-1k class names."""

from .augment import AugmentConfigError, AutoAugment, RandAugment, parse_augment
from .config import (DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, INCEPTION_MEAN, INCEPTION_STD,
                     resolve_data_config, resolve_model_data_config)
from .datasets import DatasetError, DigitsDataset, ImageFolder, find_split_dir
from .images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageLoadError, ImageNetClass, find_images,
                     imagenet_class_names, imagenet_class_table, load_image, to_rgb)
from .mixup import Mixup, smooth_one_hot
from .transforms import (ColorJitter, Compose, EvalResizeCrop, RandomErasing, RandomFlip, RandomResizedCrop,
                         ToTensorNormalize, create_transform)

__all__ = [
    "AugmentConfigError", "AutoAugment", "ColorJitter", "Compose", "DEFAULT_CROP_PCT", "DEFAULT_MAX_PIXELS",
    "DatasetError", "DigitsDataset", "EvalResizeCrop", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
    "IMAGE_EXTENSIONS", "INCEPTION_MEAN", "INCEPTION_STD", "ImageFolder", "ImageLoadError", "ImageNetClass",
    "Mixup", "RandAugment", "RandomErasing", "RandomFlip", "RandomResizedCrop", "ToTensorNormalize",
    "create_transform", "find_images", "find_split_dir", "imagenet_class_names", "imagenet_class_table",
    "load_image", "parse_augment", "resolve_data_config", "resolve_model_data_config", "smooth_one_hot", "to_rgb",
]
