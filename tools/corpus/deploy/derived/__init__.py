"""Practitioners' customisations of open-source model libraries: the derivatives of the corpus.

Each subpackage is imported by a deployment script as ``derived.<name>`` (the script's folder,
tools/corpus/deploy/, is on sys.path); it is never imported by the project itself.
"""
