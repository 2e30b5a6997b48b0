"""ImageNet-1k, ResNet-101, L-GMM (Appendix B.2 and F: the inference-speed comparison): ResNet-50's recipe."""

from configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.model.encoder = "resnet101"
    return config
