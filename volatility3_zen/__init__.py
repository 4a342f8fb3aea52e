"""volatility3-zen: recover deep-learning models and the Python code behind them from memory images.

Layout:
    zenlib/      the library: memory readers (CPython, torch), representations, analysis
    plugins/     thin Volatility 3 plugins (``linux.zen.*``), found through ``_vol_hook``
    symbols/     ISF tables for CPython / PyTorch structures, generated from DWARF by tools/
"""

__version__ = "0.1.0"
