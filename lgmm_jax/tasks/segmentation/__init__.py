"""Segmentation: an example is a labelled pixel of an image (see `task` for what that decides).

Kept light: importing `exported` (what `lgmm_jax.deploy.inference` loads) imports nothing heavier.
"""
