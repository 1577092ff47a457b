"""Backbones: named ResNet and EfficientNet-Lite trunks, reference-checkpoint loading and the feature extractor.

```python
from vlprop.backbones import create_backbone, FeatureExtractor
net = create_backbone("resnet18", stride=8, layer="res3", weights="random", seed=0)
ext = FeatureExtractor(net, short_side=480)
feats = ext(frame_uint8_hw3)          # [D, h, w] float32 on CPU
geo = ext.geometry(*frame.shape[:2])  # GridGeometry of that grid

net = create_backbone("efficientnet_lite0", weights="imagenet")  # stage4 (112 ch) at stride 8, no download
clf = create_classifier("efficientnet_lite0")                    # full ImageNet net (CAM source)
```
"""
from vlprop.backbones.colorspace import COLORSPACES, LAB_MEAN, LAB_STD, rgb_to_lab
from vlprop.backbones.efficientnet import EfficientNetLiteBackbone, create_classifier
from vlprop.backbones.extractor import FeatureExtractor, frame_to_tensor
from vlprop.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vlprop.backbones.registry import create_backbone, list_backbones, register_backbone
from vlprop.backbones.resnet import LAYERS, ResNetBackbone
from vlprop.backbones.weights import FORMATS, KEY_MAPS, load_weights, open_checkpoint, save_checkpoint

__all__ = [
    "create_backbone", "list_backbones", "register_backbone",
    "FeatureExtractor", "frame_to_tensor", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing",
    "load_weights", "open_checkpoint", "save_checkpoint", "FORMATS", "KEY_MAPS",
    "ResNetBackbone", "LAYERS", "EfficientNetLiteBackbone", "create_classifier",
    "COLORSPACES", "LAB_MEAN", "LAB_STD", "rgb_to_lab",
]
