"""Training: losses (cross-entropy, gradient-sparsity regularizer), defenses by name, the trainer.

Modules: ``losses`` (pure functions), ``defenses`` (``make_defense(name, ...)``), ``trainer``
(``TrainConfig``, ``train``), ``distributed`` (torchrun/DDP helpers), ``rng`` (RNG snapshots).
"""
