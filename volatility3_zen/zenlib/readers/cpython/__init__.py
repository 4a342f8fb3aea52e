"""Reading CPython objects out of a process's memory.

``layouts`` supplies the per-version struct layouts, constants and opcode tables (generated from each
version's DWARF by tools/gen_cpython_isf.py); the readers in this package work only with what it gives.
"""
