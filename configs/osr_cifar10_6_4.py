"""Open-set recognition, CIFAR 6/4 (Neal et al.'s splits), ResNet-34 (Section 5.2: "ResNet34 as the encoder
backbone following common practices").

The paper gives no recipe for its open-set runs beyond the backbone; this config takes mmcls's CIFAR-10
recipe (configs/cifar10.py, with its departures from the paper) and the 3x3-stem CIFAR ResNet-34.
`--config.protocol_split=0..4` picks one of the five published class splits; the paper reports AUROC
averaged over them.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.protocol = "cifar10_6_4"
    config.ood_folders = ()
    config.model.encoder = "cifar_resnet34"
    return config
