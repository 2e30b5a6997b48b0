"""Default: a small CNN on scikit-learn's digits (bundled, real), open-set 6/4 split. Minutes on 2 CPUs.

Every other config starts from this one and changes what its experiment needs, so the full list of keys
lives here. Override any of them on the command line: `--config.model.head=softmax`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # 'library': the settings below, with the library's two departures from the paper on (M-steps for
    # the Gaussians, a tempered L_D; docs/design.md "what the paper leaves open"). 'paper': Section 2 exactly as
    # written (gradient steps on L_G, Eq. 7 untempered, per-component scales, argmax assignments, no
    # re-seed, the whole memory bank, unnormalised latents); `lgmm_jax.training.experiment.paper_method_settings`
    # lists the keys it pins. 'gmmseg' (segmentation only): the per-pixel head and its updates as GMMSeg's
    # code runs them (lgmm_jax/method/gmmseg.py; `experiment.gmmseg_method_settings`, `segmentation.gmmseg` below).
    config.method = "library"
    # Keys that method 'paper' or 'gmmseg' would pin but that keep the values set here instead, e.g.
    # ("loss.assignment",): Section 2 as written with Sinkhorn's balanced assignments (an ablation).
    config.method_except = ()

    # What an example is: 'classification' (an image and its class) or 'segmentation' (the labelled
    # pixels of an image; `config.segmentation` below, configs/scenes.py). The task decides the data
    # stream, the train step's loss, the evaluation and the report; everything else is shared.
    config.task = "classification"

    # Start a new run from weights (lgmm_jax/training/initial_weights.py; docs/pretrained.md): a published
    # checkpoint file (.safetensors; .pth/.bin/.pt with `pip install -e '.[torch]'`) in a layout that
    # `lgmm_jax.pretrained` recognises, or the workdir or export of an earlier run of this library whose
    # encoder has this run's structure. 'backbone' loads the encoder (heads start fresh), 'all' every part
    # the file and the model share. Only a run at step 0 reads it; a resumed run takes its own checkpoint.
    config.init = ml_collections.ConfigDict()
    config.init.weights = ""
    config.init.what = "backbone"

    # Data. A named protocol (lgmm_jax/data/protocols.py) fixes the known classes and the unknown sets;
    # with protocol='' every class of `dataset` is known and `ood_datasets` ('dataset:split') are unknown.
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)  # TFDS data_dir (may be gs://) or the IDX folder
    config.protocol = "digits_6_4"
    config.protocol_split = 0  # which of the published class splits (0..4)
    config.ood_datasets = ()  # extra out-of-distribution sets, e.g. ('mnist_5k:test',)
    # Folders of unknown images (`folder=` sets) below `ood_folder_root`, used when the root is set: the
    # CIFAR configs name ODIN's TinyImageNet/LSUN/iSUN folders (Table 3).
    config.ood_folder_root = config_dict.placeholder(str)
    config.ood_folders = ()
    config.train_split = "train"
    config.validation_split = "validation"  # held-out known data: thresholds, never trained on
    config.test_split = "test"
    # The known classes by name, in model order (protocol=''): every other class of `dataset` is the unknown
    # set of its test split, e.g. ('tshirt', 'trouser', 'pullover') of an imagefolder= source. () = all known.
    config.known_classes = ()

    # Reading images. `dataset` may be your own labelled images, read in place (lgmm_jax/data/labelled.py):
    # 'imagefolder=PATH' (a subfolder per class, optionally inside train/ val/ test/ split folders) or
    # 'imagelist=FILE' (OpenOOD's 'relative/path label' lines; FILE is the training list).
    config.data = ml_collections.ConfigDict()
    # (H, W) every image is resized to before a preset that does not resize ('none', 'shift', 'cifar'); the
    # ImageNet presets crop to 224 themselves. () = as the source gives them; for sources of mixed sizes
    # (imagefolder=, imagelist=) the size of the first training image, recorded in config.json.
    config.data.image_size = ()
    config.data.channels = 0  # labelled sources: 0 = 1 if the files are grayscale, else 3; or 1 / 3
    # Who computes the batches (lgmm_jax/data/reading.py): worker processes, -1 = one per core for data read
    # from files (JPEG decoding scales with processes) and none for in-memory arrays; 0 = this process.
    # And reading threads in each process. The batches are the same for any choice; metrics.jsonl's
    # input_wait says whether the devices wait for them.
    config.data.workers = -1
    config.data.threads = 4
    config.data.eval_workers = 0  # evaluation streams live for one pass: threads, unless raised here
    # The normalisation statistics by dataset name (lgmm_jax/data/pipeline.py NORMALIZATION), e.g.
    # 'imagenet2012' for a model started from ImageNet weights; '' = the training dataset's own.
    config.data.normalization = ""
    # Splits that a labelled folder or list does not give are carved from its training part, per class,
    # with this seed; the file list of each split is written into the workdir (splits/).
    config.data.validation_fraction = 0.1
    config.data.test_fraction = 0.2
    config.data.split_seed = 0
    # imagelist= only: the folder the lists' paths are relative to ('' = the training list's folder), the
    # other splits' lists ('' = carved), and a file of class names, one per line ('' = the ids).
    config.data.image_root = ""
    config.data.validation_list = ""
    config.data.test_list = ""
    config.data.class_names = ""
    # No augmentation on small images: the memory bank remembers latents of augmented images, and a
    # one-pixel shift of an 8x8 digit moves them away from the clean test latents (AUROC 0.73 -> 0.95).
    config.preprocess = "none"  # none, shift, cifar, imagenet or imagenet_swin; "" = the protocol's preset

    # Schedule.
    config.batch_size = 64  # global, over all devices and hosts
    config.eval_batch_size = 256
    config.num_epochs = 40.0  # may be fractional
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.seed = 0

    # Model.
    config.model = ml_collections.ConfigDict()
    config.model.encoder = "small_cnn"
    config.model.head = "lgmm"  # or 'softmax': the discriminative counterpart
    config.model.num_components = 3  # K, Section 2.2 / Table 7(d)
    config.model.latent_dim = 128  # D, Section 5.1
    config.model.latent_normalization = "l2"  # l2, none, layernorm_l2 or l2_log_norm (docs/design.md)
    config.model.latent_norm_epsilon = 1e-6  # layernorm_l2's epsilon (segmenters; GMMSeg's PyTorch 1e-5)
    # Segmenters: the per-pixel projection to the latent, 'dense' (a 1x1 conv with bias) or 'conv_bn_relu'
    # (GMMSeg's ConvModule); and `class_norm`, a LayerNorm over the classes' log-likelihoods as the scores
    # the prediction and the decode loss take (GMMSeg's; the likelihood scores stay log p(z|y)).
    config.model.latent_projection = "dense"
    config.model.class_norm = False
    config.model.init_scale = 0.1  # about 1/sqrt(D): the scale of the unit sphere
    config.model.scale_floor = 0.05  # sigma = floor + softplus(rho) can never collapse
    config.model.share_scale = True  # one diagonal scale per class, shared by its K components
    config.model.variant = "equations"  # or 'appendix_g' (Algorithm 1: max over components)
    # How mu and sigma learn: 'moment_matching' moves them part of the way (moment_rate) to the maximum-
    # likelihood fit of the memory bank under its balanced assignments each step (an EM M-step, as
    # Appendix G does for the means; GMMSeg also fits its queues, but moves 0.001 of the way every 5
    # steps: method=gmmseg); 'gradient' takes optimiser steps on L_G (Section 2.2 as written). The M-steps keep up with a fast-moving encoder: on Fashion-MNIST (1 epoch, 3 seeds)
    # top-1 81.5 vs 79.9, AUROC 85 vs 82, 2.8 vs 1.7 components in use; after 10 epochs the two are level
    # (88.2 vs 88.2, AUROC 85 vs 88 with a seed spread of 5; docs/results.md).
    # ('gmmseg': GMMSeg's momentum updates from its queues, set by method=gmmseg.)
    config.model.gmm_update = "moment_matching"
    config.model.moment_rate = 0.5  # moment_matching: share of the way to the bank's fit per step
    config.model.dtype = "float32"  # compute dtype of the encoder; bfloat16 for mixed precision
    config.model.zero_init_residual = False  # ResNets: zero the last BN scale of each block (mmcls)
    # small_cnn: the channels of its conv layers; empty = (32, 64, 128), the 93k-parameter default.
    # mit_b*: the widths of its four stages, and encoder_depths its blocks per stage; empty = published.
    config.model.encoder_widths = ()
    config.model.encoder_depths = ()
    # Segmenters (model.encoder one of models.SEGMENTER_NAMES): overrides of the decoder's attributes,
    # e.g. {'widths': (16, 32, 80, 128), 'depths': (1, 1, 1, 1), 'decoder_width': 64} for a tiny
    # SegFormer or {'auxiliary_head': False} for DeepLabv3+ (`models.create_segmenter`'s decoder_kwargs).
    config.model.decoder = ml_collections.ConfigDict()

    # Memory bank (Appendix B.2): the last `memory_size` latents of each class.
    config.memory_size = 200

    # Optimiser (optax); the GMM has its own learning rate and no weight decay.
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # sgd, adam or adamw
    config.optimizer.learning_rate = 1e-3
    config.optimizer.gmm_learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.schedule = "cosine"  # constant, cosine, step or poly
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.warmup_start_factor = 0.0  # warm-up from this share of the rate (mmcls: 1e-3)
    config.optimizer.decay_norms_and_biases = True  # False: no decay on biases, norms, position tables
    config.optimizer.clip_grad_norm = 0.0  # > 0: clip the encoder's gradient at this global norm
    config.optimizer.decay_epochs = ()  # step schedule: epochs where the rate is multiplied
    config.optimizer.decay_factor = 0.1
    config.optimizer.power = 1.0  # poly schedule
    config.optimizer.end_learning_rate = 0.0  # poly schedule: the rate at the last step (mmseg's eta_min)
    # Segmenters: the decode head's learning rate as a multiple of `learning_rate` (mmseg's paramwise_cfg
    # 'head' lr_mult: 10 in the SegFormer recipe); its own optimiser group when not 1.
    config.optimizer.decode_head_lr_mult = 1.0

    # The softmax counterpart's batch recipe (mmcls's Swin recipe; 0 = off). L-GMM takes none of it: a
    # mixed image's latent belongs to no class (the memory bank would remember it under one label and the
    # MLE would fit it), and Eq. 7's target is the label itself.
    config.softmax = ml_collections.ConfigDict()
    config.softmax.label_smoothing = 0.0
    config.softmax.mixup_alpha = 0.0
    config.softmax.cutmix_alpha = 0.0

    # The generative objective (Eq. 5-6) and how the mixture is kept alive.
    config.loss = ml_collections.ConfigDict()
    config.loss.lambda_one = 0.1
    config.loss.lambda_avg = 1.0
    config.loss.usage_distance = "total_variation"  # W1 under the 0/1 metric; or 'kl'
    config.loss.responsibility_temperature = 1.0
    # L_D trains on softmax(log p(z|y) / T); T = 1 is Eq. 7 as written. On the unit sphere with the
    # scales at their floor, Eq. 7 is a cosine softmax of scale ~1/floor^2 = 400, which trains poorly;
    # T = 10 (scale ~40) lifted top-1 by 5 points on Fashion-MNIST (docs/results.md).
    config.loss.discriminative_temperature = 10.0
    config.loss.assignment = "sinkhorn"  # balanced assignments; 'posterior' = argmax p(k|z,y)
    config.loss.sinkhorn_epsilon = 0.05
    config.loss.sinkhorn_iterations = 10  # 3 leaves a component stuck between two modes (tests/test_mixture.py)
    config.loss.bank_sample_size = 256  # remembered slots per class each step looks at (cost: C*S*K*D)
    config.loss.training = "collaborative"  # or 'generative_only' (Table 7(a))
    config.loss.weight_ema = 0.0  # EMA of the counted mixture weights (0: counts of this step)
    config.loss.reseed_epochs = (1,)  # re-seed the means by k-means on the memory bank after these epochs

    # Segmentation (task='segmentation'; mmseg's recipes).
    config.segmentation = ml_collections.ConfigDict()
    config.segmentation.void_label = 255  # unlabelled pixels: a mask everywhere, never a class
    # mmseg's training pipeline (lgmm_jax/data/seg_augment.py): RandomResize(scale, ratio_range,
    # keep_ratio), RandomCrop(crop_size, cat_max_ratio), RandomFlip, PhotoMetricDistortion.
    config.segmentation.scale = (64, 64)  # (long, short) side before the random ratio
    config.segmentation.ratio_range = (0.5, 2.0)
    config.segmentation.crop_size = (64, 64)  # (height, width) of a training crop: the network's input
    config.segmentation.cat_max_ratio = 0.75
    # The per-pixel L-GMM (objective.PixelConfig): labelled pixels of each class per step that the memory
    # bank and L_G see, and whether misclassified pixels are among them (GMMSeg: only correct ones).
    config.segmentation.pixels_per_class = 64
    config.segmentation.remember_misclassified = True
    config.segmentation.auxiliary_weight = 0.4  # DeepLabv3+'s auxiliary FCN cross-entropy (mmseg)
    # The per-pixel cross-entropies (decode, auxiliary, L-GMM's L_D) sum over labelled pixels and divide by
    # every pixel, as mmseg's CrossEntropyLoss by default; True divides by the labelled pixels only.
    config.segmentation.avg_non_ignore = False
    # Inference (mmseg's test_cfg): 'whole' (the full image at once) or 'slide' (crop_size windows
    # every stride, class scores summed and divided by the windows' overlap count).
    config.segmentation.inference = "whole"
    config.segmentation.slide_crop = (64, 64)
    config.segmentation.slide_stride = (43, 43)
    # mmseg's test-time Resize(scale, keep_ratio=True) before the network, () = none; the class scores
    # are resized back to the label's size (bilinear) before the argmax and the scores.
    config.segmentation.eval_scale = ()
    # 0: evaluate as mmseg tests, images unpadded, a batch holding images of one size (one compilation per
    # size); > 0: batches of any sizes zero-padded to a multiple of this (fewer compilations, but the
    # padding enters image pooling, attention and border context).
    config.segmentation.size_divisor = 0
    # method=gmmseg's numbers, GMMSeg's own (configs/_gmmseg/models/base_model_config.py of its code):
    # latents remembered per component, pixels a component admits per step (evenly spaced), steps between
    # updates of the Gaussians, the momenta of means and scales (the share of the old value kept), the
    # variance offset, the component cross-entropy's weight, and the balanced assignment's settings.
    config.segmentation.gmmseg = ml_collections.ConfigDict()
    config.segmentation.gmmseg.queue_size = 32000
    config.segmentation.gmmseg.max_per_component = 20
    config.segmentation.gmmseg.update_interval = 5
    config.segmentation.gmmseg.mean_momentum = 0.999
    config.segmentation.gmmseg.scale_momentum = 0.0
    config.segmentation.gmmseg.variance_offset = 1e-2
    config.segmentation.gmmseg.contrast_weight = 0.01
    config.segmentation.gmmseg.sinkhorn_iterations = 3
    config.segmentation.gmmseg.sinkhorn_epsilon = 0.05
    # Training images (eval transform) that the softmax scores' statistics are fitted on: Standardized
    # Max Logits' per-class mean and std, Mahalanobis' class means and tied covariance. 0 = all.
    config.segmentation.fit_images = 500
    config.segmentation.eval_images = 0  # only the first N images of each evaluation set (0 = all): quick looks
    config.segmentation.picture_images = 4  # test images per unknown set drawn in pictures_<set>.png

    # A labelled folder of one's own, dataset='segfolder=PATH' (lgmm_jax/data/segfolder.py), in mmseg's
    # custom-dataset layout: PATH/img_dir/{train,val,test}/<stem><img_suffix> with
    # PATH/ann_dir/{train,val,test}/<stem><seg_map_suffix> (label PNGs of class ids, 255 void).
    config.segfolder = ml_collections.ConfigDict()
    config.segfolder.img_suffix = ".jpg"
    config.segfolder.seg_map_suffix = ".png"
    config.segfolder.class_names = ""  # one class name per line; '' = PATH/classes.txt (relative: inside PATH)
    config.segfolder.reduce_zero_label = False  # mmseg's: raw 0 -> void, raw k -> class k - 1, 255 stays void

    # Evaluation.
    config.eval = ml_collections.ConfigDict()
    config.eval.scores = ()  # () = every score the head has (lgmm_jax/ood/scores.py)
    config.eval.threshold_tpr = 0.95  # the rejection threshold keeps this share of known data
    # Exports reject a known-class input with probability at most alpha (split-conformal on the validation
    # split, lgmm_jax/ood/conformal.py); evaluation reports the share of known test images that rejects.
    config.eval.alpha = 0.05
    # A learning curve: also evaluate after these epochs (workdir/curve/epoch_E/results.json, same shape).
    config.eval.epochs = ()
    # PNG figures beside report.md (ROC curves, histograms, segmentation pictures); False: none, no matplotlib.
    config.eval.figures = True
    return config
