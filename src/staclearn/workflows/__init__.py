"""The three workflows, each a Config, a Result and a run_* that composes the steps below it.

Names load lazily (``lazy_loader``): importing this package imports none of its modules
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submodules=['change', 'damage', 'landcover'],
    submod_attrs={
        'change': ['ChangeConfig', 'ChangeResult', 'run_change'],
        'damage': ['DamageConfig', 'DamageResult', 'run_damage', 'BASELINE_NAME'],
        'landcover': ['LandCoverConfig', 'LandCoverResult', 'run_landcover'],
    },
)
