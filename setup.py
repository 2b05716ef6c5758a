from setuptools import find_packages, setup

setup(
    name="semi_nnunet",
    version="0.1.0",
    description="nnU-Net v2, made semi-supervised: unlabeled images as first-class data, "
                "semi-supervised trainers, staged pseudo-labels and challenge-ready ensembling.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["semi_nnunet", "semi_nnunet.*"]),
    include_package_data=True,
    package_data={"semi_nnunet": ["demo_data/**/*", "demo_data/*"]},
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.1.2",
        "batchgeneratorsv2>=0.3",
        "dynamic-network-architectures>=0.4",
        "acvl-utils>=0.2",
        "SimpleITK>=2.2",
        "scikit-image>=0.21",
        "scipy",
        "numpy",
        "tqdm",
        "matplotlib",
        "medpy>=0.5",  # HD95 / ASD in semi_nnUNet_evaluate (the challenge papers' implementation)
        "segment-anything>=1.0",  # SAM architecture for SynFoC
        "peft>=0.10",  # LoRA adapters for SynFoC's SAM encoder
        "torchvision",  # ResNet backbones of USL-Net's saliency stage (MoCo v2, CCAM)
    ],
    extras_require={
        "ray": ["ray>=2.9"],  # --executor ray, --parallel: a local instance or a cluster (documentation/cluster.md)
        "slurm": ["submitit>=1.5"],  # --executor slurm: one job per task, afterok dependencies, requeue on USR1
        "test": ["pytest>=7", "ray>=2.9", "submitit>=1.5", "wandb"],  # wandb: nnU-Net's W&B logging, offline
    },
    entry_points={
        "console_scripts": [
            "semi_nnUNet_plan_and_preprocess=semi_nnunet.run.plan_and_preprocess_entrypoint:main",
            "semi_nnUNet_convert_hc18=semi_nnunet.run.conversion_entrypoints:convert_hc18_entry",
            "semi_nnUNet_convert_msd_hippocampus=semi_nnunet.run.conversion_entrypoints:convert_msd_hippocampus_entry",
            "semi_nnUNet_convert_2d=semi_nnunet.run.conversion_entrypoints:convert_2d_folder_entry",
            "semi_nnUNet_train=semi_nnunet.run.train_entrypoint:main",
            "semi_nnUNet_predict=semi_nnunet.run.predict_entrypoint:main",
            "semi_nnUNet_evaluate=semi_nnunet.run.evaluate_entrypoint:main",
            "semi_nnUNet_ext_path=semi_nnunet.run.train_entrypoint:ext_path_main",
            "semi_nnUNet_demo=semi_nnunet.run.demo_entrypoint:main",
            "semi_nnUNet_run_uslnet=semi_nnunet.run.uslnet_entrypoint:main",
            "semi_nnUNet_benchmark=semi_nnunet.run.benchmark_entrypoint:main",
        ],
    },
)
