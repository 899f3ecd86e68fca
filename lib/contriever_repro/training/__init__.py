"""Training: views and augmentations, token shards, contrastive objectives, optimiser, checkpoints,
the training loop and its launch (workflow/rules/training.smk).
"""
