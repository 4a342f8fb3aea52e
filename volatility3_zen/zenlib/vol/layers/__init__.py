"""Volatility translation layers that Volatility itself lacks.

``elfcore`` maps single-process ELF cores (gcore, kernel core dumps, ``volatility3_zen.capture``) at
their virtual addresses.  Importing it registers its stacker with Volatility's automagic.
"""
