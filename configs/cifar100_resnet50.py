"""CIFAR-100, ResNet-50, L-GMM (Table 1): mmcls's `resnet50_8xb16_cifar100`, the recipe of configs/cifar100.py."""

from configs import cifar100


def get_config():
    config = cifar100.get_config()
    config.model.encoder = "cifar_resnet50"
    return config
