"""The shared core of volatility3-zen, one folder per layer (docs/architecture.md).

From the top down; a layer imports only itself and the layers below it:
    vol/             the only glue to Volatility: session (processes, error policy, models with their
                     process and UR), targets (Volatility tasks and cores -> ProcessMemory), automagic,
                     layers/ (the ELF process-core layer)
    bundle/          the patch bundle and the report: collect (reads what the bundle needs from the
                     opened process into contents, plain data), write (the zip, from representations), format (the container,
                     standard library only), report (HTML, from representations)
    readers/         memory -> CPython objects -> torch objects -> representations: memory, elfimage,
                     cpython/, torch/, fingerprint (one model -> its UR)
    analysis/        on representations only, no image: similarity, attribution, diff, heatmap, library
    representation/  plain dataclasses with a versioned JSON form: program, model, unified
errors.py is shared by every layer.
"""
