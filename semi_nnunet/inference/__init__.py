"""Prediction and in-memory ensembling on nnU-Net's predictor (``semi_nnUNet_predict``)."""
