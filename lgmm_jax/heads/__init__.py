"""The heads a run can train, each one module behind `base.Head`, picked by `config.model.head` (and, for
L-GMM, `config.model.gmm_update`).

A head owns what differs between the density head and its softmax counterpart: the model it closes, the
parameters its optimiser groups, what the train state carries, its train step given the task's losses, its
class scores and open-set scores, and what its export serves. The train loop, evaluation and export ask the
head (`get(config.model)`) and never which head runs.

    heads/lgmm.py      L-GMM (Section 2): theta by L_G's gradient, or by moment matching toward the memory bank
    heads/gmmseg.py    L-GMM's head trained by GMMSeg's update rule (its queues and momentum updates)
    heads/softmax.py   the discriminative counterpart: a linear classifier and the task's cross-entropy

The table imports a head's module only when asked, as the tasks' table does.
"""

from __future__ import annotations

import importlib

import ml_collections

HEADS = ("lgmm", "softmax")  # model.head
GMM_UPDATES = ("gradient", "moment_matching", "gmmseg")  # model.gmm_update: how L-GMM's Gaussians learn
# The update rules with a module of their own (the others are the L-GMM head's own).
UPDATE_RULE_MODULES = {"gmmseg": "gmmseg"}


def gmm_update(model_config: ml_collections.ConfigDict) -> str:
    """How the Gaussians learn: 'gradient' (optimiser steps on L_G), 'moment_matching' (M-steps toward the
    memory bank's fit) or 'gmmseg' (GMMSeg's momentum updates from its queues, `lgmm_jax.method.gmmseg`)."""
    update = model_config.get("gmm_update", "gradient")
    if update not in GMM_UPDATES:
        raise ValueError(f"model.gmm_update={update!r} is not one of {GMM_UPDATES}")
    return update


def module_name(model_config: ml_collections.ConfigDict) -> str:
    """The module of `heads` that `model_config` trains: its head, or the head's update rule's own."""
    head = model_config.head
    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is not one of {HEADS}")
    update = gmm_update(model_config)
    return UPDATE_RULE_MODULES.get(update, head) if head == "lgmm" else head


def get(model_config: ml_collections.ConfigDict):
    """The `base.Head` of a config's `model` section."""
    return importlib.import_module(f"lgmm_jax.heads.{module_name(model_config)}").HEAD


def named(head: str):
    """The `base.Head` of a `model.head` name (as model.json and results.json record it): what inference asks
    of a head (its outputs, class scores and scores) is the same whatever its update rule."""
    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is not one of {HEADS}")
    return importlib.import_module(f"lgmm_jax.heads.{head}").HEAD


def create_model(model_config: ml_collections.ConfigDict, num_classes: int):
    """The model `model_config` describes (`model.encoder` closed by `model.head`) for `num_classes` classes:
    what training, evaluation and an exported model's loader build, so that each rebuilds the same one."""
    return get(model_config).create_model(model_config, num_classes)
