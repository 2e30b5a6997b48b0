"""SegFormer on ADE20K (paper Table 5's L-GMM-Segformer, Appendix D): mmseg's recipe
`segformer_mit-b5_8xb2-160k_ade20k-512x512`, GMMSeg's SegFormer-B5 ADE20K config.

Which MiT-B: the paper writes "MiT_Base" without a number; GMMSeg (the closest public code) uses B5. So
B5 (84.7M parameters at 150 classes); --config.model.encoder=segformer_b2 etc. picks another.

- Data: ADEChallengeData2016 under --config.data_dir as configs/ade20k_deeplabv3plus_r101.py, training crop 512x512 from
  RandomResize((2048, 512), ratio 0.5-2.0); test: Resize((2048, 512), keep_ratio), whole inference.
  Appendix D.2 trains every ADE20K model on 512x512 crops; Table 5's 640x640 mark belongs to the
  Segmenter and MaskFormer rows it compares with, not to SegFormer's.
- Schedule: batch 16, 160k iterations, AdamW (betas 0.9/0.999) 6e-5, weight decay 0.01 (none on norm
  layers, mmseg's decay_mult 0 on 'norm'; biases skip it too here), the decode head at 10x the
  learning rate (mmseg's lr_mult 10 on 'head': `optimizer.decode_head_lr_mult`, its own optimiser group),
  linear warm-up over 1500 iterations from 1e-6 of the rate, then poly (power 1) to 0. Drop path 0.1.
- Decode head: mainline mmseg's, as GMMSeg's `SegformerGMMSegHead` builds it (the paper's codebase): a 1x1
  ConvModule (conv, BatchNorm, ReLU) per stage (`model.decoder.decode_projection="conv_bn_relu"`), not the
  Linear per stage of NVlabs' and Hugging Face's release ("linear"; a whole published file of theirs sets
  it back, `lgmm_jax.pretrained.model_options`).
- L-GMM: 64-d latents, 8 components per class on ADE20K (GMMSeg), 2000 remembered pixels per class; the
  Gaussians learn at the encoder's base rate.
- Method: the paper's numbers for this model (Table 5) are Section 2's L-GMM, `--config.method=paper`;
  the default `library` adds the library's departures (docs/design.md "what the paper leaves open"), and
  `--config.method=gmmseg` trains GMMSeg's head and updates on the same model (GMMSeg's own ADE20K
  SegFormer-B5 number is this config with it: 8 components, 32,000 latents per queue).
- Starting point: the ImageNet-1k MiT-B5 of SegFormer's release, `--config.init.weights=mit_b5.pth`
  (NVlabs) or Hugging Face's `nvidia/mit-b5` `model.safetensors`; the decode head and the per-pixel head
  start fresh. A Hugging Face file also sets its LayerNorm epsilon (1e-5) in model.decoder, recorded in
  config.json.
"""

from configs import ade20k_deeplabv3plus_r101

ADE20K_TRAIN_IMAGES = 20_210
WARMUP_ITERATIONS = 1500


def use_segformer_optimizer(config, num_train_images: int) -> None:
    """SegFormer's optimiser and schedule (mmseg), for a run of `config.batch_size` over that many images."""
    opt = config.optimizer
    opt.name = "adamw"
    opt.learning_rate = 6e-5
    opt.gmm_learning_rate = 6e-5
    opt.weight_decay = 0.01
    opt.decay_norms_and_biases = False
    opt.decode_head_lr_mult = 10.0
    opt.schedule = "poly"
    opt.power = 1.0
    opt.end_learning_rate = 0.0
    opt.warmup_epochs = WARMUP_ITERATIONS / (num_train_images // config.batch_size)
    opt.warmup_start_factor = 1e-6


def get_config():
    config = ade20k_deeplabv3plus_r101.get_config()  # the data, schedule length and L-GMM settings
    config.model.encoder = "segformer_b5"
    config.model.decoder.decode_projection = "conv_bn_relu"  # GMMSeg's SegFormer head (mainline mmseg)
    use_segformer_optimizer(config, ADE20K_TRAIN_IMAGES)
    seg = config.segmentation
    seg.auxiliary_weight = 0.0  # SegFormer has no auxiliary head
    seg.scale = (2048, 512)
    seg.crop_size = (512, 512)
    seg.eval_scale = (2048, 512)
    return config
