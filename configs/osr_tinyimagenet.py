"""Open-set recognition, TinyImageNet 20/180 (Table 4), ResNet-34 on mmcls's CIFAR-10 recipe (see
configs/osr_cifar10_6_4.py) at TinyImageNet's 64x64.

TFDS has no TinyImageNet builder: prepare a TFDS dataset named `tiny_imagenet` with the label order
lgmm_jax/data/protocols.py documents (docs/data.md). CIFAR's augmentation (4-pixel padding, random crop,
flip) and the CIFAR ResNet's 3x3 stem, as the open-set literature runs TinyImageNet.
"""

from configs import osr_cifar10_6_4


def get_config():
    config = osr_cifar10_6_4.get_config()
    config.dataset = "tiny_imagenet"
    config.protocol = "tinyimagenet_20_180"
    return config
