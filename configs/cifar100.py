"""CIFAR-100, ResNet-101, L-GMM (Section 5.1, Tables 1 and 7; Appendix B.2): the CIFAR-10 recipe.

Out-of-distribution sets: SVHN and CIFAR-10 from TFDS.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "cifar100"
    config.protocol = "cifar100_ood"
    return config
