"""Benchmarks that ship with the package (the label-efficiency benchmark: ``semi_nnUNet_benchmark``)."""
