"""Networks besides nnU-Net's planned U-Net (foundation models used by some methods)."""
