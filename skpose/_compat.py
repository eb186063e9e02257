"""Old module paths, kept importable with a deprecation warning.

skpose 0.1 had flat modules (``skpose.rotations``, ``skpose.matching``, ...). They now
live in subpackages that show the layers (``docs/architecture.md``). ``import
skpose.rotations`` (or ``from skpose.rotations import quat_to_matrix``) still works: it
warns with a :class:`DeprecationWarning` naming the new place and returns an alias
module whose attributes are those of the new module(s).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: Old module -> the modules whose public names it held.
MOVED = {
    "skpose.rotations": ("skpose.geometry.rotations",),
    "skpose.symmetry": ("skpose.geometry.symmetry",),
    "skpose.ctf": ("skpose.imaging.ctf",),
    "skpose.projection": ("skpose.imaging.projection",),
    "skpose.preprocess": ("skpose.imaging.preprocess",),
    "skpose.reconstruction": ("skpose.imaging.reconstruction",),
    "skpose.models": ("skpose.imaging.models",),
    "skpose.network": ("skpose.learn.network",),
    "skpose.losses": ("skpose.learn.losses",),
    "skpose.estimator": ("skpose.estimators.orientation",),
    "skpose.matching": ("skpose.search", "skpose.estimators.matcher"),
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names in :data:`MOVED` and loads their new modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        targets = MOVED[spec.name]
        new = " and ".join(targets)
        warnings.warn(
            f"'{spec.name}' is deprecated and will be removed in skpose 0.3; import "
            f"from '{new}' (or from 'skpose') instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        modules = [importlib.import_module(name) for name in targets]
        alias = types.ModuleType(spec.name, modules[0].__doc__)
        alias.__all__ = sorted({n for m in modules for n in getattr(m, "__all__", ())})

        def __getattr__(name):
            for module in modules:
                if hasattr(module, name):
                    return getattr(module, name)
            raise AttributeError(f"module {spec.name!r} has no attribute {name!r}")

        alias.__getattr__ = __getattr__
        return alias

    def exec_module(self, module):
        """Nothing to run: the module was imported under its new name."""


def install() -> None:
    """Put the finder on :data:`sys.meta_path` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
