"""Declarative metadata lives in setup.cfg; this file only installs the Volatility startup hook.

Volatility 3 has no entry point for third-party plugins: it walks ``volatility3.plugins.__path__``.
``volatility3_zen_startup.pth`` runs ``volatility3_zen._vol_hook`` at interpreter start, which appends
our plugin and symbol folders to those paths once Volatility is imported.  Setuptools copies a .pth
file into neither wheels nor editable installs on its own, hence the two command overrides.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "volatility3_zen_startup.pth"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy so the editable wheel carries our .pth as well."""

    def __init__(self, inner):
        self.inner = inner

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self.inner(wheel, files, mapping)
        with open(PTH, "rb") as fh:
            wheel.writestr(PTH, fh.read())


class editable_wheel_with_pth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
