"""Training: augmentation, the trainer, the LOSO runner and model selection.

The models' losses live with the models (:mod:`merkit.models.blocks.losses`).
"""
