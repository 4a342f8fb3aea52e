"""Makes ``linux.zen.*`` visible to ``vol`` without ``-p``.

Imported at interpreter start by ``volatility3_zen_startup.pth``.  It must stay cheap: it imports
nothing heavy and only installs a meta-path finder that waits for ``volatility3.framework.constants``.
When that module has run, our plugin and symbol folders are appended to Volatility's search paths
(the same lists ``volatility3.plugins.__path__`` and ``volatility3.symbols.__path__`` use).
"""

import importlib.abc
import os
import sys

_TARGET = "volatility3.framework.constants"
_HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.join(_HERE, "plugins")
SYMBOL_DIR = os.path.join(_HERE, "symbols")


def extend_paths(constants) -> None:
    """Appends our folders to Volatility's plugin/symbol paths (idempotent)."""
    for path_list, folder in ((constants.PLUGINS_PATH, PLUGIN_DIR), (constants.SYMBOL_BASEPATHS, SYMBOL_DIR)):
        if folder not in path_list:
            path_list.append(folder)


class _ConstantsWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # find the real spec with the remaining finders, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            extend_paths(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        extend_paths(sys.modules[_TARGET])
    elif not any(isinstance(f, _ConstantsWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _ConstantsWatcher())


install()
