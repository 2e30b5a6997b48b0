"""CIFAR-10, ResNet-101, L-GMM (Section 5.1, Table 1; Appendix B.2).

The paper trains with mmclassification's default CIFAR recipe: 200 epochs, SGD with momentum 0.9,
learning rate 0.1 multiplied by 0.1 at epochs 100 and 150, weight decay 1e-4, a total batch of 128
(16 per GPU on 8 GPUs), random crop with 4-pixel padding and horizontal flip, and a memory of 2000
latents per class. Data: TFDS `cifar10`, prepared once into --config.data_dir (see README).
Out-of-distribution sets (Section 5.3): SVHN and CIFAR-100 from TFDS.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.protocol = "cifar10_ood"  # known: all of CIFAR-10; unknown: svhn_cropped, cifar100
    config.train_split = "train[:95%]"
    config.validation_split = "train[95%:]"
    config.test_split = "test"
    config.preprocess = "cifar"

    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 200
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000

    config.model.encoder = "cifar_resnet101"
    config.memory_size = 2000

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.gmm_learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "step"
    config.optimizer.decay_epochs = (100, 150)
    config.optimizer.decay_factor = 0.1
    return config
