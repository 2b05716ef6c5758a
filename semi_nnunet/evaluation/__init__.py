"""Evaluation on nnU-Net's metrics and MedPy surface distances (``semi_nnUNet_evaluate``)."""
