"""semi_nnunet: nnU-Net v2, made semi-supervised."""
__version__ = "0.1.0"
