"""Training: losses, augmentation, the trainer, the LOSO runner and model selection."""
