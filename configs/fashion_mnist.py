"""Fashion-MNIST (bundled by Debian's dataset-fashion-mnist) with every class known; MNIST-5k is unknown.

`--config.protocol=fashion_mnist_6_4` gives the 6/4 open-set split instead.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fashion_mnist"
    config.protocol = "fashion_mnist_vs_mnist"
    config.batch_size = 128
    config.num_epochs = 5
    config.memory_size = 500
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 50
    return config
