"""DeepLabv3+ R101-D8 on Cityscapes (paper Sections 5.3-5.4, Tables 5 and 6; Appendix D): mmseg's recipe
`deeplabv3plus_r101-d8_4xb2-80k_cityscapes-769x769`, then open-set segmentation on Fishyscapes Lost &
Found and Road Anomaly unchanged.

- Data: TFDS `cityscapes` (semantic_segmentation; the official zips, manual download), 19 train ids, the
  rest void. Training: RandomResize((2049, 1025), ratio 0.5-2.0), RandomCrop(769x769, cat_max_ratio
  0.75), flip, photometric distortion. Test: slide inference, 769x769 windows every 513 pixels, on the
  full 1024x2048 image.
- align_corners=True in both heads, as mmseg's 769x769 Cityscapes recipes set it (769 = 8 x 96 + 1: the
  1/8 and 1/4 maps' corners fall on the crop's corners): `model.decoder.align_corners`, which the decode
  head's upsampling, the losses' and inference's resizing all follow.
- Schedule: batch 8, 80k iterations, SGD momentum 0.9, weight decay 5e-4, poly (power 0.9) to 1e-4,
  learning rate 0.01 (mmseg's default; configs/ade20k_deeplabv3plus_r101.py says why not the paper's 0.1).
- Unknown sets (Table 6): with --config.ood_folder_root=DIR, the folders DIR/fishyscapes_lostandfound
  (images/ and labels/ in the Fishyscapes format) and DIR/road_anomaly (as the release ships:
  frames/*.jpg with frames/*.labels/labels_semantic.png). See lgmm_jax/data/segmentation.py.
- L-GMM: 64-d latents, 5 components per class (GMMSeg), 2000 remembered pixels per class.
- Method: the paper's numbers for this model (Table 5 and 6) are Section 2's L-GMM, `--config.method=paper`;
  the default `library` adds the library's departures (docs/design.md "what the paper leaves open"), and
  `--config.method=gmmseg` trains GMMSeg's head and updates on the same model (GMMSeg's 5
  components, as here).
- Starting point: the ImageNet ResNetV1c-101 of mmseg's recipe, `--config.init.weights=
  resnet101_v1c-e67eebb6.pth` (see configs/ade20k_deeplabv3plus_r101.py). To evaluate mmseg's trained
  softmax model instead, load its model-zoo checkpoint whole: `--config.model.head=softmax
  --config.init.weights=deeplabv3plus_r101-d8_769x769_80k_cityscapes.pth --config.init.what=all`.
"""

from configs import ade20k_deeplabv3plus_r101


def get_config():
    config = ade20k_deeplabv3plus_r101.get_config()  # the model, optimiser and L-GMM settings
    config.dataset = "cityscapes"
    config.ood_folders = ("fishyscapes_lostandfound", "road_anomaly")
    config.validation_split = "validation"
    config.test_split = "validation"  # Cityscapes' test labels are withheld: Table 5 is on val

    config.batch_size = 8
    config.num_train_steps = 80_000
    config.model.num_components = 5
    config.model.decoder.align_corners = True

    seg = config.segmentation
    seg.scale = (2049, 1025)
    seg.crop_size = (769, 769)
    seg.inference = "slide"
    seg.slide_crop = (769, 769)
    seg.slide_stride = (513, 513)
    seg.eval_scale = ()
    seg.fit_images = 500
    return config
