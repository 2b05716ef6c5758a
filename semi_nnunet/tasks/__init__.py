"""The task graph and its executors: one layer that training over folds, the staged pseudo-label pipeline,
large-set prediction and the label-efficiency benchmark share.

A :class:`~semi_nnunet.tasks.graph.Task` names a function by its dotted path (so any executor can run it in another
process or on another machine), its keyword arguments, the tasks it depends on and the files whose existence means it
is done. :mod:`semi_nnunet.tasks.executors` runs a graph in this process (``local``, the default), on Ray (a local
instance or a cluster) or on Slurm (submitit, one job per task, ``afterok`` dependencies).

This package depends on the standard library only (Ray and submitit are imported when their executor is chosen), so
every other layer may use it.
"""
from semi_nnunet.tasks.graph import Graph, Task  # noqa: F401
