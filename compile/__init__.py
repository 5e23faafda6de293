"""qvit_compile: lowers a trained Q-ViT to bit-serial low-bit operators in one self-contained model.so
(Apache TVM)."""
__version__ = "0.1.0"
