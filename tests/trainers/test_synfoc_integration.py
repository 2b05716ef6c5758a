"""SynFoC on CPU with the random tiny SAM: train 2 epochs -> checkpoint (U-Net alone in network_weights, both SAMs
under auxiliary_weights) -> resume with --c into a longer run -> predict with stock nnUNetv2_predict. Plus the
trainer-level checks that need a planned dataset: the update step moves LoRA, decoder and U-Net but never the frozen
encoder; ViT-B without a checkpoint and 3D configurations fail in initialize() with messages that say what to do."""
import copy
import os
import shutil
import subprocess

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.networks.sam import MEDSAM_FILE, SAM_CHECKPOINT_ENV, build_sam
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import ext_trainer_path
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.trainers.synfoc import (SynFoCSetupError, SynFoCTrainer, SynFoCTrainer_tinySAM,
                                         SynFoCTrainer_tinySAM_2epochs_2it)

DATASET_ID, NAME = 981, "Dataset981_Synthetic2D"
TRAINER = "SynFoCTrainer_tinySAM_2epochs_2it"


class SynFoCTrainer_tinySAM_3epochs_2it(SynFoCTrainer_tinySAM_2epochs_2it):
    """The same run, one epoch longer: what a resumed run continues into."""
    schedule = {**SynFoCTrainer_tinySAM_2epochs_2it.schedule, "num_epochs": 3}


@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], DATASET_ID, dim=2, num_labeled=5, num_unlabeled=3, num_test=2)
    plan_and_preprocess(DATASET_ID, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], NAME)
    return module_paths, load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def make(cls, planned, configuration="2d", plans=None):
    _, default_plans, dataset_json = planned
    return cls({**(plans or default_plans), "continue_training": False}, configuration, 0, dataset_json,
               torch.device("cpu"))


def batch(trainer, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c = trainer.batch_size, trainer.num_input_channels
    patch = [int(s) for s in trainer.configuration_manager.patch_size]
    targets = [torch.randint(0, 2, (b, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]), generator=g).float()
               for scale in trainer._get_deep_supervision_scales()]
    labeled = {"data": torch.randn((b, c, *patch), generator=g), "target": targets}
    unlabeled = trainer.prepare_unlabeled({"data": torch.randn((b, 2 * c, *patch), generator=g)})
    return labeled, unlabeled


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_update_step_moves_lora_decoder_and_unet_never_the_frozen_encoder(planned):
    trainer = make(SynFoCTrainer_tinySAM, planned)
    trainer.initialize()
    student = trainer.sam_student
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(student.named_parameters())
    frozen = {n: p.detach().clone() for n, p in named.items() if n.startswith("image_encoder") and "lora_" not in n}
    assert not any(id(named[n]) in optimized for n in frozen), "the frozen encoder is not given to the optimizer"
    assert all(id(p) in optimized for p in trainer.network.parameters())
    assert not any(id(p) in optimized for p in trainer.sam_teacher.parameters() if p.requires_grad)
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(1.2e-4)  # SAM: AdamW, SynFoC's lr

    lora_b = {n: p.detach().clone() for n, p in named.items() if "lora_B" in n}
    decoder = student.mask_decoder.output_upscaling[0].weight.detach().clone()
    unet = [p.detach().clone() for p in trainer.network.parameters()]
    teacher_lora = {n: p.detach().clone() for n, p in trainer.sam_teacher.named_parameters() if "lora_B" in n}
    trainer.global_step = 5
    labeled, unlabeled = batch(trainer)
    sup, unsup, logs = trainer.update_step(labeled, unlabeled)
    trainer.after_step()
    assert torch.isfinite(sup) and torch.isfinite(unsup) and 0 <= logs["smc_lambda"] <= 1
    for n, value in frozen.items():
        assert torch.equal(named[n], value), f"{n} moved"
    assert all(not torch.equal(named[n], v) for n, v in lora_b.items()), "every LoRA B moved"
    assert not torch.equal(student.mask_decoder.output_upscaling[0].weight, decoder)
    assert any(not torch.equal(a, b) for a, b in zip(unet, trainer.network.parameters()))
    teacher = dict(trainer.sam_teacher.named_parameters())
    assert any(not torch.equal(teacher[n], v) for n, v in teacher_lora.items()), "the SAM teacher follows (EMA)"


def test_unlabeled_loss_trains_the_lora_adapters_of_the_sam_student(planned):
    trainer = make(SynFoCTrainer_tinySAM, planned)
    trainer.initialize()
    with torch.no_grad():  # B = 0 at the start gives A no gradient; move B off zero as training does
        for n, p in trainer.sam_student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    trainer.global_step = trainer.num_epochs * trainer.num_iterations_per_epoch // 2
    labeled, unlabeled = batch(trainer, seed=1)
    unsup, _ = trainer.unlabeled_loss(unlabeled, labeled)
    unsup.backward()
    for n, p in trainer.sam_student.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no unlabeled gradient"


def test_sam_from_a_file_is_read_again_on_resume_not_saved(planned, tmp_path):
    """With weights from a file the checkpoint leaves out the frozen encoder (360 MB for ViT-B) and resume takes it
    from the file; LoRA, decoders and the teacher are saved."""
    weights = str(tmp_path / "tiny_sam.pth")
    torch.manual_seed(3)
    torch.save(build_sam("tiny_random", 2, 64).state_dict(), weights)

    class FromFile(SynFoCTrainer_tinySAM):
        sam_checkpoint = weights

    trainer = make(FromFile, planned)
    trainer.initialize()
    path = join(str(tmp_path), "checkpoint.pth")
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)["auxiliary_weights"]
    assert not any(k.startswith("sam_student.image_encoder.blocks.0.attn.qkv.base_layer") for k in saved)
    assert "sam_student.image_encoder.blocks.0.attn.qkv.lora_B.default.weight" in saved
    assert any(k.startswith("sam_teacher.mask_decoder") for k in saved)
    with torch.no_grad():
        trainer.sam_student.mask_decoder.mask_tokens.weight.add_(1.0)
    expected = copy.deepcopy(trainer.auxiliary.state_dict())
    trainer.save_checkpoint(path)

    other = make(FromFile, planned)
    other.initialize()
    other.load_checkpoint(path)
    assert _state_equal(other.auxiliary.state_dict(), expected)


def test_vit_b_without_checkpoint_fails_in_initialize(planned, monkeypatch):
    monkeypatch.delenv(SAM_CHECKPOINT_ENV, raising=False)
    with pytest.raises(SynFoCSetupError) as e:
        make(SynFoCTrainer, planned).initialize()
    for text in (SAM_CHECKPOINT_ENV, MEDSAM_FILE, "https://github.com/bowang-lab/MedSAM", "SynFoCTrainer_tinySAM"):
        assert text in str(e.value)
    monkeypatch.setenv(SAM_CHECKPOINT_ENV, "/nowhere/medsam_vit_b.pth")
    with pytest.raises(SynFoCSetupError, match=r"/nowhere/medsam_vit_b.pth \(from the environment variable "
                       + SAM_CHECKPOINT_ENV + r"\) does not exist"):
        make(SynFoCTrainer, planned).initialize()


def test_command_line_without_checkpoint_prints_how_to_get_it(planned, monkeypatch, capsys):
    monkeypatch.delenv(SAM_CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    with pytest.raises(SystemExit) as e:
        train_main([str(DATASET_ID), "2d", "SynFoCTrainer", "0", "-device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert SAM_CHECKPOINT_ENV in err and MEDSAM_FILE in err and "Traceback" not in err


def test_3d_configuration_is_refused_with_the_fix(planned):
    _, plans, _ = planned
    plans = copy.deepcopy(plans)
    config = plans["configurations"]["2d"]
    plans["configurations"]["3d_fullres"] = {**config, "patch_size": [8, *config["patch_size"]],
                                             "spacing": [1.0, *config["spacing"]],
                                             "median_image_size_in_voxels": [8, *config["median_image_size_in_voxels"]]}
    with pytest.raises(SynFoCSetupError, match="2D only.*Train the 2d configuration"):
        make(SynFoCTrainer_tinySAM, planned, "3d_fullres", plans).initialize()


def test_train_resume_predict(planned, monkeypatch):
    paths = planned[0]
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    train_main([str(DATASET_ID), "2d", TRAINER, "0", "-device", "cpu"])
    model = join(paths["nnUNet_results"], NAME, f"{TRAINER}__nnUNetPlans__2d")
    final = join(model, "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["semi_global_step"] == 4
    assert not any(k.startswith(("sam_", "image_encoder", "mask_decoder")) for k in ckpt["network_weights"])
    aux = ckpt["auxiliary_weights"]
    student = {k[len("sam_student."):]: v for k, v in aux.items() if k.startswith("sam_student.")}
    teacher = {k[len("sam_teacher."):]: v for k, v in aux.items() if k.startswith("sam_teacher.")}
    assert student.keys() == teacher.keys() and any("lora_B" in k for k in student)
    lora = [k for k in student if "lora_B" in k]
    assert any(not torch.equal(student[k], teacher[k]) for k in lora), "the SAM teacher lags the student"
    assert all(not torch.equal(student[k], torch.zeros_like(student[k])) for k in lora), "LoRA trained"
    encoder = "image_encoder.blocks.0.attn.qkv.base_layer.weight"
    assert torch.equal(student[encoder], teacher[encoder]), "one frozen encoder, shared"
    for key in ("sam_sup_loss", "sam_unsup_loss", "cdcr_consensus", "smc_lambda", "confident_fraction"):
        assert len(ckpt["logging"][key]) == 2
    assert all(0 <= v <= 1 for v in ckpt["logging"]["smc_lambda"])

    # stock nnUNetv2_predict loads the U-Net alone (no SAM needed at inference)
    out = join(paths["nnUNet_results"], "pred_stock")
    raw = join(paths["nnUNet_raw"], NAME)
    r = subprocess.run([shutil.which("nnUNetv2_predict"), "-i", join(raw, "imagesTs"), "-o", out, "-d",
                        str(DATASET_ID), "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1",
                        "-nps", "1", "--disable_tta"], check=False, capture_output=True, text=True,
                       env={**os.environ, "nnUNet_extTrainer": ext_trainer_path()})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["test000.png", "test001.png"]

    # resume (what --c does) into a longer schedule: both SAMs, both U-Nets, the optimizer and the counters continue
    from nnunetv2.run.run_training import maybe_load_checkpoint
    pre = join(paths["nnUNet_preprocessed"], NAME)
    plans = {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": True}
    trainer = SynFoCTrainer_tinySAM_3epochs_2it(plans, "2d", 0, load_json(join(pre, "dataset.json")),
                                                torch.device("cpu"))
    trainer.output_folder = join(model, "fold_0")
    maybe_load_checkpoint(trainer, True, False, None)
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    assert _state_equal(trainer.network.state_dict(), ckpt["network_weights"])
    assert _state_equal(trainer.teacher.state_dict(), ckpt["teacher_weights"])
    assert _state_equal(trainer.auxiliary.state_dict(), aux)
    assert trainer.optimizer.optimizers[1].state, "SAM's AdamW moments restored"
    trainer.run_training()
    resumed = torch.load(final, map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 3 and resumed["semi_global_step"] == 6
    assert len(resumed["logging"]["sam_unsup_loss"]) == 3
