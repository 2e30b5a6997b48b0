"""The training run: the jitted steps and the loop, the train state, what a config asks for, restoring and starting from weights."""
