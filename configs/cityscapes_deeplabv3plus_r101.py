"""DeepLabv3+ R101-D8 on Cityscapes (paper Sections 5.3-5.4, Tables 5 and 6; Appendix D): mmseg's recipe
`deeplabv3plus_r101-d8_4xb2-80k_cityscapes-769x769`, then open-set segmentation on Fishyscapes Lost &
Found and Road Anomaly unchanged.

- Data: TFDS `cityscapes` (semantic_segmentation; the official zips, manual download), 19 train ids, the
  rest void. Training: RandomResize((2049, 1025), ratio 0.5-2.0), RandomCrop(769x769, cat_max_ratio
  0.75), flip, photometric distortion. Test: slide inference, 769x769 windows every 513 pixels, on the
  full 1024x2048 image.
- Schedule: batch 8, 80k iterations, SGD momentum 0.9, weight decay 5e-4, poly (power 0.9) to 1e-4,
  learning rate 0.01 (mmseg's default; configs/ade20k_deeplabv3plus_r101.py says why not the paper's 0.1).
- Unknown sets (Table 6): with --config.ood_folder_root=DIR, the folders DIR/fishyscapes_lostandfound
  (images/ and labels/ in the Fishyscapes format) and DIR/road_anomaly (as the release ships:
  frames/*.jpg with frames/*.labels/labels_semantic.png). See lgmm_jax/data/segmentation.py.
- L-GMM: 64-d latents, 5 components per class (GMMSeg), 2000 remembered pixels per class.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.task = "segmentation"
    config.dataset = "cityscapes"
    config.protocol = ""
    config.ood_datasets = ()
    config.ood_folders = ("fishyscapes_lostandfound", "road_anomaly")
    config.train_split = "train"
    config.validation_split = "validation"
    config.test_split = "validation"  # Cityscapes' test labels are withheld: Table 5 is on val
    config.preprocess = "none"

    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 80_000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 4000

    config.model.encoder = "deeplabv3plus_r101"
    config.model.latent_dim = 64
    config.model.num_components = 5
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
    seg.scale = (2049, 1025)
    seg.crop_size = (769, 769)
    seg.ratio_range = (0.5, 2.0)
    seg.cat_max_ratio = 0.75
    seg.auxiliary_weight = 0.4
    seg.pixels_per_class = 100
    seg.inference = "slide"
    seg.slide_crop = (769, 769)
    seg.slide_stride = (513, 513)
    seg.eval_scale = ()
    seg.fit_images = 500
    return config
