"""ImageNet-1k, Swin-S, L-GMM (Table 8): the Swin-B recipe (configs/imagenet_swin_b.py, mmcls
`swin-small_16xb64_in1k`) with Swin-S, whose stochastic depth is 0.3 (the backbone's default for swin_s)."""

from configs import imagenet_swin_b


def get_config():
    config = imagenet_swin_b.get_config()
    config.model.encoder = "swin_s"
    return config
