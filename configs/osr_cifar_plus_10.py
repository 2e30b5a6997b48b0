"""Open-set recognition, CIFAR+10 (Table 4): 4 CIFAR-10 classes known, 10 CIFAR-100 classes unknown
(Neal et al.'s splits), ResNet-34 on mmcls's CIFAR-10 recipe (see configs/osr_cifar10_6_4.py)."""

from configs import osr_cifar10_6_4


def get_config():
    config = osr_cifar10_6_4.get_config()
    config.protocol = "cifar_plus_10"
    return config
