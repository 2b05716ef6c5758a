"""Optimizers: Hierarchical Cautious Optimization (two gradients) and the Cautious Optimizer baselines."""
from semi_nnunet.optim.cautious import CautiousAdamW, CautiousSGD
from semi_nnunet.optim.hco import (HierarchicalCautiousAdam, HierarchicalCautiousAdamW, HierarchicalCautiousSGD,
                                   mask_scale)

__all__ = ["HierarchicalCautiousAdamW", "HierarchicalCautiousAdam", "HierarchicalCautiousSGD", "CautiousAdamW",
           "CautiousSGD", "mask_scale"]
