"""Your own labelled images, ResNet-50 fine-tuned from ImageNet weights, L-GMM.

The images are read in place from a folder with a subfolder per class (torchvision's ImageFolder layout;
optional train/ val/ test/ split folders, else validation and test are carved per class:
`data.validation_fraction` 0.1, `data.test_fraction` 0.2, `data.split_seed`; lgmm_jax/data/labelled.py).
With `known_classes` every class not named is the unknown set of the test split; left empty, every class
is known and only `ood_datasets` are unknown.

    python -m lgmm_jax.main --config=configs/folder_resnet50.py --workdir=/tmp/mine \\
        --config.dataset=imagefolder=/data/my_photos \\
        --config.init.weights=resnet50-0676ba61.pth \\
        --config.known_classes="('cat', 'dog', 'horse')"
    python -m lgmm_jax.export --workdir=/tmp/mine --output=/tmp/mine_export
    python -m lgmm_jax.predict --model=/tmp/mine_export new_photos/ --output=predictions.jsonl

`resnet50-0676ba61.pth` is torchvision's `ResNet50_Weights.IMAGENET1K_V1` file (a `.pth` needs
`pip install -e '.[torch]'`; the same state dict saved as `.safetensors` needs nothing). The encoder comes
from the file (`init.what='backbone'`); the projection to the latent and the Gaussians start fresh. A new
run checkpoints the loaded state as step 0 and lists what it loaded in `init_weights.json`.

The schedule is mmpretrain's fine-tuning recipe for ImageNet-pretrained ResNet-50 on a small labelled
set (`resnet50_8xb8_cub`, schedule `cub_bs64`): a total batch of 64 (8 per GPU on 8 GPUs), SGD with
momentum 0.9 and Nesterov, learning rate 0.01, weight decay 5e-4, 5 warm-up epochs rising linearly from
0.01 of the rate, then cosine annealing to 0 at epoch 100. The images go through the statistics and the
preprocessing the published weights were trained with: ImageNet's mean and std
(`data.normalization='imagenet2012'`), random resized crop 224 and flip (evaluation: shorter side 256,
centre crop 224), as torchvision trained `IMAGENET1K_V1`.

Where it departs from mmpretrain and why:
- The `imagenet` preset's random resized crop (scale 0.08-1) at 224 instead of the recipe's resize and
  random crop of 448 (mmpretrain's data pipeline for CUB's fine-grained birds; evaluation: the centre
  448): 224 is the size the weights were trained at, and a quarter of the pixels.
- A memory of 200 latents per class (the default's) instead of the paper's 2,000: the bank holds the
  last latents of each class, and a class of a small folder (tens to hundreds of training images) would
  fill 2,000 slots with the same images from ten or more epochs back, from an encoder that has moved since.
  200 slots are one to a few epochs of such a class; the loss looks at all of them (`loss.bank_sample_size`
  256).
- The library's method (M-steps for the Gaussians, L_D at temperature 10; `--config.method=paper` for
  Section 2 as written), its k-means re-seed of the means after epoch 1, and the GMM's learning rate 0.01
  (the ImageNet and CIFAR configs'; only `gmm_update=gradient`, e.g. method=paper, uses it).
- An evaluation batch of 256 (the default's): inference keeps no activations for a backward pass, so it
  fits where the training batch of 64 does.

`dataset` must be given: the placeholder `imagefolder=` names no folder. The evaluation's KNN scores
(`knn_latent`, `knn_features`) look at the 50th nearest training image, so they need at least 50 training
images of the known classes; with fewer, leave them out:
`--config.eval.scores="('likelihood', 'marginal', 'posterior', 'rmds_features')"`. The export's
rejection threshold at alpha 0.05 needs at least 19 validation images (the floor(alpha (n + 1))-th
smallest score; with fewer it is -inf and accepts everything): the carve's tenth of each class gives that
from about 190 known images on, or raise `data.validation_fraction` or give a val/ folder.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "imagefolder="  # --config.dataset=imagefolder=/path/to/your/images
    config.protocol = ""
    config.known_classes = ()  # e.g. "('cat', 'dog')": the other classes are the unknown set
    config.preprocess = "imagenet"
    config.data.normalization = "imagenet2012"  # what the published ResNet-50 was trained on

    config.init.weights = ""  # --config.init.weights=resnet50-0676ba61.pth (torchvision's ImageNet file)
    config.init.what = "backbone"

    config.batch_size = 64
    config.eval_batch_size = 256
    config.num_epochs = 100

    config.model.encoder = "resnet50"
    config.memory_size = 200

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.gmm_learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 5
    config.optimizer.warmup_start_factor = 0.01
    config.loss.reseed_epochs = (1,)
    return config
