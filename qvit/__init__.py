"""qvit: the training side of qvit-edge (fully quantized DeiT / Swin with IRM and DGD).

Importing the package itself pulls in nothing heavy; torch and timm load with the
modules that need them.
"""
__version__ = "0.1.0"
