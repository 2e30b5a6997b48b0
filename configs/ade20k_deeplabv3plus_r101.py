"""DeepLabv3+ R101-D8 on ADE20K (paper Section 5.3, Table 5; Appendix D): mmseg's recipe
`deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512`.

- Data: ADE20K as mmseg reads it, `ADEChallengeData2016/` (or the official ADEChallengeData2016.zip)
  under `--config.data_dir=DIR` (label 0 "other" is void, mmseg's reduce_zero_label), 150 classes.
  TFDS's `scene_parse150` is refused: its builder downloads the instance-challenge masks, not these. Training pipeline: RandomResize((2048, 512), ratio 0.5-2.0), RandomCrop(512x512,
  cat_max_ratio 0.75), flip, photometric distortion. Test: Resize((2048, 512), keep_ratio), whole
  inference, scores resized to the original label size.
- Schedule: batch 16, 160k iterations, SGD momentum 0.9, weight decay 5e-4, poly (power 0.9) to 1e-4.
- Learning rate 0.01, mmseg's default, not the paper's 0.1: Appendix D says 0.1 but also says the
  runs follow mmseg's default training settings, and the baseline it reports (45.5 mIoU) is mmseg's
  model-zoo number for lr 0.01 (45.47); SGD at 0.1 on this recipe is 10x the rate the number was
  measured at. Override with --config.optimizer.learning_rate=0.1 to take the paper literally.
- Auxiliary FCN head on stage 3, loss weight 0.4 (both heads). L-GMM: 64-d latents, 8 components per
  class on ADE20K (GMMSeg's choice), 2000 remembered pixels per class (Appendix D's memory size).
- Method: the paper's numbers for this model (Table 5) are Section 2's L-GMM, `--config.method=paper`;
  the default `library` adds the library's departures (docs/design.md "what the paper leaves open"), and
  `--config.method=gmmseg` trains GMMSeg's head and updates on the same model.
- Starting point: mmseg's recipe loads the ImageNet ResNetV1c-101 (`open-mmlab://resnet101_v1c`, mmcls's
  `resnet101_v1c-e67eebb6.pth`) into the backbone; the heads start fresh. Pass the file (a .pth needs
  `pip install -e '.[torch]'`; a .safetensors does not):
  `--config.init.weights=resnet101_v1c-e67eebb6.pth` (init.what='backbone'). Without it the run starts
  from random weights, which is not the paper's recipe.
- The validation split (rejection thresholds only) is ADE's val, which is also the test split: ADE20K has
  no other held-out labelled set.
"""

from configs import default

STEPS = 160_000
BATCH = 16


def get_config():
    config = default.get_config()
    config.task = "segmentation"
    config.dataset = "ade20k"
    config.protocol = ""
    config.ood_datasets = ()
    config.train_split = "train"
    config.validation_split = "validation"
    config.test_split = "validation"
    config.preprocess = "none"

    config.batch_size = BATCH
    config.eval_batch_size = 8
    config.num_train_steps = STEPS
    config.log_every_steps = 50
    config.checkpoint_every_steps = 4000

    config.model.encoder = "deeplabv3plus_r101"
    config.model.latent_dim = 64
    config.model.num_components = 8
    config.memory_size = 2000
    config.loss.reseed_epochs = ()

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.gmm_learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "poly"
    config.optimizer.power = 0.9
    config.optimizer.end_learning_rate = 1e-4
    config.optimizer.warmup_epochs = 0.0

    seg = config.segmentation
    seg.scale = (2048, 512)
    seg.crop_size = (512, 512)
    seg.ratio_range = (0.5, 2.0)
    seg.cat_max_ratio = 0.75
    seg.auxiliary_weight = 0.4
    seg.pixels_per_class = 100  # GMMSeg: at most 20 per component and step
    seg.inference = "whole"
    seg.eval_scale = (2048, 512)
    seg.fit_images = 2000
    return config
