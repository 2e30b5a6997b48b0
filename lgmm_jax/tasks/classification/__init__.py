"""Classification: an example is an image and its class (see `task` for what that decides).

Kept light: importing `exported` (what `lgmm_jax.deploy.inference` loads) imports nothing heavier.
"""
