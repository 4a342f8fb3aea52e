"""MobileNetV3-Small for CIFAR-10: the MobileNetV2 family's newer version, from timm's own code.

Howard et al., "Searching for MobileNetV3": inverted residuals with squeeze-and-excitation and
hard-swish, found by architecture search.  Nothing is added: a practitioner who moves from
MobileNetV2 to V3 takes timm's model and sets the class count and the dropout of the head.

    model = mobilenetv3_cifar(num_classes=10)
"""

import timm


def mobilenetv3_cifar(num_classes=10, variant="mobilenetv3_small_100", drop_rate=0.2):
    return timm.create_model(variant, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
