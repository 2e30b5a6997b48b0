"""ImageNet-1k, ResNet-101, L-GMM (Table 2; Appendix F's inference-speed comparison): ResNet-50's recipe
(configs/imagenet_resnet50.py, mmcls `resnet101_8xb32_in1k`)."""

from configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.model.encoder = "resnet101"
    return config
