"""Derivatives of the trained-weights corpus models (deploy/trained.py), imported as a package so their
classes have real module names (``trained_derived.crepe_tempered.TemperedCrepe``).

Kept apart from derived/, whose files are hashed into the family venv's identity."""
