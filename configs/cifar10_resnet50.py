"""CIFAR-10, ResNet-50, L-GMM (Table 1): mmcls's `resnet50_8xb16_cifar10`, the recipe of configs/cifar10.py."""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.model.encoder = "cifar_resnet50"
    return config
