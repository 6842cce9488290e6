"""Fitting: one trainer loop with task hooks, checkpoints, the learning-rate finder and device choice.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['checkpoint', 'device', 'lr_finder', 'objects', 'segmentation', 'trainer'],
    submod_attrs={
        'checkpoint': ['TrainingState', 'save_training_state', 'load_training_state', 'capture_rng', 'restore_rng'],
        'device': ['resolve_device', 'seed_everything'],
        'lr_finder': ['LRFindResult', 'valley_lr', 'steepest_lr'],
        'objects': ['ClassifierEpoch', 'ClassifierTrainer', 'default_augmentation', 'inverse_frequency_weights'],
        'segmentation': ['Trainer', 'EpochRecord', 'class_weights', 'train_ensemble'],
        'trainer': ['BaseTrainer'],
    },
)
