"""qvit_edge: the device runtime. Needs only numpy, cffi and Pillow (and the project's native library)."""
__version__ = "0.1.0"
