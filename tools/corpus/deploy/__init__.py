"""Deployment scripts, run as scripts by the deployed interpreters (3.7-3.13), never imported as a package.

This file only lets tests import ``tools.corpus.deploy._groundtruth`` to check its encoding.
"""
