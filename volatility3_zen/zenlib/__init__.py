"""The shared core of volatility3-zen.

Layers, from the bottom up (each knows nothing of the ones above it):
    memory        ProcessMemory: one process's virtual memory, acquisition independent
    layers/       Volatility layers we add (ELF process cores)
    cpython/      memory -> CPython objects (runtime discovery, GC walk, code objects, bytecode)
    representation/  plain dataclasses with a versioned JSON form (what the readers produce)
    volatility.py    the glue plugins use: Volatility contexts/tasks -> ProcessMemory
"""
