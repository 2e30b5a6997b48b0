"""ImageNet-1k, Swin-B, L-GMM (Table 8; Appendix B.2).

The paper: 300 epochs, AdamW with learning rate 5e-4 under polynomial annealing, a total batch of 128
(16 per GPU on 8 GPUs); Swin's own recipe supplies weight decay 0.05, 20 warm-up epochs and
stochastic depth 0.5 (the backbone's default for swin_b).
"""

from configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.model.encoder = "swin_b"
    config.num_epochs = 300
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.gmm_learning_rate = 5e-4
    config.optimizer.weight_decay = 0.05
    config.optimizer.schedule = "poly"
    config.optimizer.power = 1.0
    config.optimizer.warmup_epochs = 20
    config.optimizer.decay_epochs = ()
    return config
