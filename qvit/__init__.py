"""qvit: the training side of qvit-edge (fully quantized DeiT / Swin with IRM and DGD).

Where timm is installed, importing qvit registers the Q-ViT models in timm's registry
(`timm.create_model("qvit_deit_tiny_patch4_28", bits=2)`, `timm.list_models("qvit_*")`;
qvit/models/timm_registry.py). Without torch and timm (a device) the package still imports, so the
command line can say in one line what is missing.
"""
__version__ = "0.1.0"


def _register_with_timm() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        return
    from qvit.models import timm_registry  # noqa: F401  (registers on import)


_register_with_timm()
