"""USL-Net (unsupervised segmentation from saliency): the pieces outside nnU-Net's training loop.

``backbone`` (ResNet trunk, checkpoints, images), ``moco`` (MoCo v2 pre-training), ``ccam`` (CCAM saliency),
``uncertainty`` (three-way split, connectivity / centrality), ``pseudo_labels`` (preprocessed pseudo-label folders),
``cycles`` (the resumable pipeline), ``report`` (per-cycle JSON and overlay sheets), ``data`` (label withholding,
evaluation labels). The segmentation trainer is :class:`semi_nnunet.trainers.uslnet.USLNetTrainer`; the command is
``semi_nnUNet_run_uslnet``. Documentation: ``documentation/methods/uslnet.md``.
"""
