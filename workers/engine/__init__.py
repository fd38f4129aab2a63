"""Lethe's ML engine: pure PyTorch, usable as a library without the service.

Kronfluence-style: prepare → fit → score → load, with everything expensive cached under a name.
This package imports nothing heavy at import time; submodules import torch.
"""
