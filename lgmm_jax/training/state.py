"""Building what a run trains from its config: the optimiser and the train state (the model itself comes
from `lgmm_jax.models.configured`).

Shared by training, evaluation and export, so that each rebuilds exactly the same structures.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lgmm_jax import heads
from lgmm_jax.method.memory import MemoryBank
from lgmm_jax.models.configured import initial_variables
from lgmm_jax.runtime.sharding import class_sharding, replicated

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "poly")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped (all of it is checkpointed).

    params: {"backbone", "projection", "head"} for L-GMM (theta = params["head"]), {"backbone",
      "classifier"} for the softmax counterpart. mixture: the counted weights {"head": {"log_weights"}}
      ({} for softmax). memory: what the head carries besides its parameters (`Head.initial_memory`:
      L-GMM's class-conditional memory bank, GMMSeg's queues; None for softmax). rng: the run's base key;
      each step folds its step number in.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    mixture: Any
    opt_state: Any
    memory: MemoryBank | None
    rng: jax.Array


def learning_rate_schedule(
    optimizer_config: ml_collections.ConfigDict,
    base_learning_rate: float,
    steps_per_epoch: int,
    total_steps: int,
) -> optax.Schedule:
    """Linear warm-up from `warmup_start_factor` of the rate, then constant, cosine, step (x decay_factor at
    each of decay_epochs) or polynomial decay (power `power`) to `end_learning_rate` (0 by default)."""
    name = optimizer_config.schedule
    warmup_steps = int(optimizer_config.warmup_epochs * steps_per_epoch)
    decay_steps = max(total_steps - warmup_steps, 1)
    if name == "constant":
        main = optax.constant_schedule(base_learning_rate)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(base_learning_rate, decay_steps)
    elif name == "step":
        boundaries = {
            int(epoch * steps_per_epoch) - warmup_steps: optimizer_config.decay_factor
            for epoch in optimizer_config.decay_epochs
        }
        main = optax.piecewise_constant_schedule(base_learning_rate, boundaries)
    elif name == "poly":
        end = optimizer_config.get("end_learning_rate", 0.0)  # mmseg's PolyLR eta_min
        main = optax.polynomial_schedule(base_learning_rate, end, optimizer_config.power, decay_steps)
    else:
        raise ValueError(f"optimizer.schedule={name!r} is not one of {SCHEDULES}")
    if warmup_steps == 0:
        return main
    start = base_learning_rate * optimizer_config.get("warmup_start_factor", 0.0)
    warmup = optax.linear_schedule(start, base_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


# Parameters mmcls's Swin recipe exempts from weight decay besides norms and biases (paramwise_cfg).
NO_DECAY_TABLES = ("relative_position_bias_table", "absolute_pos_embed")


def takes_weight_decay(path) -> bool:
    """False for biases, the scales of norm layers (BatchNorm, LayerNorm) and position tables."""
    name = getattr(path[-1], "key", None)
    return name not in ("bias", "scale") and name not in NO_DECAY_TABLES


def weight_decay_mask(params):
    """True where `takes_weight_decay` (optax's mask for add_decayed_weights / adamw)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: takes_weight_decay(path), params)


def base_optimizer(optimizer_config, learning_rate, weight_decay: float):
    """SGD (momentum, Nesterov), Adam or AdamW with `weight_decay` (coupled for SGD and Adam: added to the
    gradient; decoupled for AdamW); with `decay_norms_and_biases` False the decay skips biases, norm
    scales and position tables, as mmcls's Swin recipe does."""
    name = optimizer_config.name
    mask = None if optimizer_config.get("decay_norms_and_biases", True) else weight_decay_mask
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask),
            optax.sgd(learning_rate, momentum=optimizer_config.momentum, nesterov=optimizer_config.nesterov),
        )
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask), optax.adam(learning_rate))
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
    raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")


def encoder_optimizer(optimizer_config, learning_rate):
    """The encoder's optimiser (phi, and the softmax counterpart's classifier): `base_optimizer` with the
    configured weight decay, after clipping the gradient's global norm at `clip_grad_norm` (0 = no clip)."""
    optimizer = base_optimizer(optimizer_config, learning_rate, optimizer_config.weight_decay)
    clip = optimizer_config.get("clip_grad_norm", 0.0)
    if clip < 0:
        raise ValueError(f"optimizer.clip_grad_norm={clip} must be >= 0 (0 = no clipping)")
    return optax.chain(optax.clip_by_global_norm(clip), optimizer) if clip > 0 else optimizer


# A segmenter's decode head, mmseg's 'head' key (SegFormer's lr_mult=10): the decoder's heads, wherever
# they sit, and the per-pixel classifier or L-GMM projection (top-level modules) that close them.
DECODER_HEAD_MODULES = ("decode_head", "auxiliary_head")
CLOSING_MODULES = ("classifier", "projection", "latent_norm", "class_layer_norm")


def is_decode_head(path) -> bool:
    keys = [getattr(entry, "key", None) for entry in path]
    return keys[0] in CLOSING_MODULES or any(key in DECODER_HEAD_MODULES for key in keys)


def parameter_groups(params, head, separate_decode_head: bool = False):
    """The optimiser group of every parameter: the `head`'s own group for its density head theta ('gmm',
    `Head.optimizer_group`), 'decode_head' for a segmenter's decode head when it has its own learning rate
    (`separate_decode_head`, see `is_decode_head`), 'encoder' for everything else (phi), the softmax
    counterpart's classifier included."""

    def group(path, _) -> str:
        own = head.optimizer_group(path)
        if own is not None:
            return own
        if separate_decode_head and is_decode_head(path):
            return "decode_head"
        return "encoder"

    return jax.tree_util.tree_map_with_path(group, params)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int):
    """optax.multi_transform: the encoder and the GMM each with their own learning rate.

    The GMM takes no weight decay: decaying the means would pull every class toward the origin. With
    `optimizer.decode_head_lr_mult` != 1 a segmenter's decode head is a third group, the encoder's
    optimiser at that multiple of its learning rate (mmseg's `paramwise_cfg` 'head' lr_mult, 10 in the
    SegFormer recipe); at 1 it stays in the encoder's group (the optimiser state keeps its structure).
    """
    opt = config.optimizer
    encoder_lr = learning_rate_schedule(opt, opt.learning_rate, steps_per_epoch, total_steps)
    gmm_lr = learning_rate_schedule(opt, opt.gmm_learning_rate, steps_per_epoch, total_steps)
    head = heads.get(config.model)
    gmm = base_optimizer(opt, gmm_lr, 0.0) if head.gmm_takes_gradient(config.model) else optax.set_to_zero()
    transforms = {"encoder": encoder_optimizer(opt, encoder_lr), "gmm": gmm}
    multiplier = float(opt.get("decode_head_lr_mult", 1.0))
    if multiplier <= 0:
        raise ValueError(f"optimizer.decode_head_lr_mult={multiplier} must be positive (1 = no separate rate)")
    separate = multiplier != 1.0
    if separate:
        head_lr = learning_rate_schedule(opt, multiplier * opt.learning_rate, steps_per_epoch, total_steps)
        transforms["decode_head"] = encoder_optimizer(opt, head_lr)
    labels = functools.partial(parameter_groups, head=head, separate_decode_head=separate)
    return optax.multi_transform(transforms, labels), encoder_lr


def create_train_state(
    config: ml_collections.ConfigDict,
    model,
    optimizer: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    num_classes: int,
) -> TrainState:
    """A fresh state: initial parameters, uniform mixture weights, and what the head carries besides them
    (`Head.initial_memory`: L-GMM's empty memory bank, GMMSeg's queues of random unit vectors)."""
    key = jax.random.PRNGKey(config.seed)
    init_key, run_key = jax.random.split(key)
    variables = initial_variables(model, init_key, image_shape)
    params = variables["params"]
    memory = heads.get(config.model).initial_memory(config, init_key, num_classes)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        mixture=variables.get("mixture", {}),
        opt_state=optimizer.init(params),
        memory=memory,
        rng=run_key,
    )


def state_shardings(abstract_state: TrainState, mesh, num_classes: int) -> TrainState:
    """Everything replicated but the memory bank, which is split along its class axis (GMMSeg's queues
    along their class-and-component axis)."""
    shardings = jax.tree.map(lambda _: replicated(mesh), abstract_state)
    if abstract_state.memory is not None:
        by_class = class_sharding(mesh, abstract_state.memory.num_classes)
        shardings = shardings.replace(memory=jax.tree.map(lambda _: by_class, abstract_state.memory))
    return shardings


def create_sharded_train_state(config, model, optimizer, image_shape, num_classes, mesh):
    """(state, shardings): the state created directly in its shardings by a jitted initialiser."""
    init = lambda: create_train_state(config, model, optimizer, image_shape, num_classes)  # noqa: E731
    abstract = jax.eval_shape(init)
    shardings = state_shardings(abstract, mesh, num_classes)
    return jax.jit(init, out_shardings=shardings)(), shardings

