"""Never lose a run: reused output folders, torn and failed checkpoint saves, resumption, divergence, early checks."""

import json
import os
import shutil

import datasets
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import BertModel

from cmow import CMOWForMaskedLM, CMOWModel
from cmow.distill import DistillationConfig, distill_from_model
from cmow.distill.checkpoints import RUN_FILE, checkpoint_folders, latest_checkpoint
from cmow.distill.objectives import DistillationModule
from cmow.distill.trainer import TrainingDiverged
from conftest import tiny_config
from test_distill import corpus_texts, run_config, tiny_teacher

DATASET = datasets.Dataset.from_dict({"text": corpus_texts(20)})  # 7 batches per epoch


def run(tokenizer, folder, config: DistillationConfig, **kwargs):
    """A tiny MLM distillation with a freshly seeded student, as every run of the same command builds it."""
    torch.manual_seed(0)
    student = CMOWForMaskedLM(tiny_config())
    return distill_from_model(tiny_teacher(), tokenizer, student, DATASET, folder, config, **kwargs)


def steps(folder) -> list[str]:
    return [path.name for path in checkpoint_folders(folder)]


def assert_same_weights(folder, reference):
    expected = load_file(reference / "model.safetensors")
    for name, tensor in load_file(folder / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


def test_a_reused_output_folder_is_refused_unless_resumed_or_overwritten(tiny_tokenizer, tmp_path):
    run(tiny_tokenizer, tmp_path, run_config(max_steps=10, save_steps=3))
    assert steps(tmp_path) == ["step-6", "step-9"]
    second = run_config(max_steps=12, save_steps=2, seed=7, stop_at_step=4)
    with pytest.raises(FileExistsError, match=r"checkpoints \(step-6, step-9\) of an earlier run.*--resume"):
        run(tiny_tokenizer, tmp_path, second)
    assert steps(tmp_path) == ["step-6", "step-9"]  # nothing touched

    run(tiny_tokenizer, tmp_path, second, overwrite_output_dir=True)
    assert steps(tmp_path) == ["step-2", "step-4"]  # only the new run's: the old ones were deleted first
    run(tiny_tokenizer, tmp_path, run_config(max_steps=12, save_steps=2, seed=7), resume=True)
    saved = json.loads((tmp_path / "config.json").read_text())["distillation"]
    assert (saved["seed"], saved["steps"]) == (7, 12)

    finished = tmp_path / "finished"  # a saved model without checkpoints is an earlier run too
    run(tiny_tokenizer, finished, run_config(max_steps=2))
    with pytest.raises(FileExistsError, match=r"a saved model \(config.json\)"):
        run(tiny_tokenizer, finished, run_config(max_steps=2))
    with pytest.raises(ValueError, match="not both"):
        run(tiny_tokenizer, finished, run_config(max_steps=2), resume=True, overwrite_output_dir=True)


def test_resume_refuses_other_settings_and_names_them(tiny_tokenizer, tmp_path):
    run(tiny_tokenizer, tmp_path, run_config(max_steps=10, save_steps=5, stop_at_step=5))
    changed = run_config(max_steps=10, save_steps=5, learning_rate=0.01, seed=7)
    with pytest.raises(ValueError, match=r"learning_rate: 0.03 in the checkpoint, 0.01 now; .*seed: 42 .* 7 now"):
        run(tiny_tokenizer, tmp_path, changed, resume=True)
    torch.manual_seed(0)
    wider = CMOWForMaskedLM(tiny_config(matrix_size=5))
    with pytest.raises(ValueError, match=r"student.matrix_size: 4 in the checkpoint, 5 now"):
        config = run_config(max_steps=10, save_steps=5)
        distill_from_model(tiny_teacher(), tiny_tokenizer, wider, DATASET, tmp_path, config, resume=True)
    assert not (tmp_path / "config.json").exists()
    # When to stop, save and log may change.
    run(tiny_tokenizer, tmp_path, run_config(max_steps=10, save_steps=3, logging_steps=1), resume=True)
    assert json.loads((tmp_path / "config.json").read_text())["distillation"]["steps"] == 10


def test_resume_skips_torn_and_unreadable_checkpoints(tiny_tokenizer, tmp_path):
    config = run_config(max_steps=10, save_steps=5)
    run(tiny_tokenizer, tmp_path / "straight", config)
    folder = tmp_path / "interrupted"
    run(tiny_tokenizer, folder, run_config(max_steps=10, save_steps=5, stop_at_step=5))
    good = folder / "checkpoints" / "step-5"
    assert (good / RUN_FILE).is_file() and not list((folder / "checkpoints").glob("tmp-*"))
    # As an interrupted save of an older cmow left them, and one damaged after it was written.
    (folder / "checkpoints" / "step-9").mkdir()
    torn = shutil.copytree(good, folder / "checkpoints" / "step-8")
    (torn / RUN_FILE).unlink()
    damaged = shutil.copytree(good, folder / "checkpoints" / "step-7")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert latest_checkpoint(folder) == damaged
    run(tiny_tokenizer, folder, config, resume=True)
    assert_same_weights(folder, tmp_path / "straight")


def test_a_save_that_fails_midway_leaves_the_last_checkpoint_to_resume(tiny_tokenizer, tmp_path, monkeypatch):
    config = run_config(max_steps=10, save_steps=2)
    run(tiny_tokenizer, tmp_path / "straight", config)
    save_state = Accelerator.save_state
    calls = []

    def disk_full_at_the_second_save(self, output_dir, **kwargs):
        calls.append(output_dir)
        save_state(self, output_dir, **kwargs)
        if len(calls) == 2:
            os.truncate(os.path.join(output_dir, "optimizer.bin"), 10)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_the_second_save)
    folder = tmp_path / "full-disk"
    with pytest.raises(OSError, match="No space left"):
        run(tiny_tokenizer, folder, config)
    monkeypatch.undo()
    assert steps(folder) == ["step-2"] and [p.name for p in (folder / "checkpoints").glob("tmp-*")] == ["tmp-step-4"]
    run(tiny_tokenizer, folder, config, resume=True)
    assert not list((folder / "checkpoints").glob("tmp-*"))  # the next save cleared the leftover
    assert_same_weights(folder, tmp_path / "straight")


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_tokenizer, tmp_path, monkeypatch):
    forward = DistillationModule.forward
    calls = []

    def nan_from_the_seventh_batch(self, batch, targets):
        calls.append(1)
        terms = forward(self, batch, targets)
        return {**terms, "loss": terms["loss"] * float("nan")} if len(calls) >= 7 else terms

    monkeypatch.setattr(DistillationModule, "forward", nan_from_the_seventh_batch)
    with pytest.raises(TrainingDiverged, match=r"loss is not finite \(nan here\) at step 7.*step-6, is kept"):
        run(tiny_tokenizer, tmp_path, run_config(max_steps=10, save_steps=3))
    assert steps(tmp_path) == ["step-3", "step-6"] and not (tmp_path / "model.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoints/step-6/model.safetensors").values())


def test_a_nan_weight_or_learning_rate_is_refused(tiny_tokenizer, tmp_path):
    student = CMOWModel(tiny_config(embedding_size=12))
    with torch.no_grad():
        student.encoder.cbow_embeddings.weight[5:30] = float("nan")
    config = run_config(init="random")
    with pytest.raises(TrainingDiverged, match="at step 1.*No checkpoint was saved"):
        distill_from_model(tiny_teacher(BertModel), tiny_tokenizer, student, DATASET, tmp_path, config)
    assert not (tmp_path / "model.safetensors").exists()
    for value in ("nan", "inf", "-1"):
        with pytest.raises(ValueError, match="learning_rate` must be a finite number > 0"):
            DistillationConfig(learning_rate=float(value))


def test_bad_output_folders_and_lengths_fail_before_training(tiny_tokenizer, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PermissionError, match="Cannot write to the output folder"):
        run(tiny_tokenizer, tmp_path / "a-file" / "out", run_config())
    with pytest.raises(ValueError, match=r"max_seq_length=30 exceeds the teacher's max_position_embeddings \(17\)"):
        run(tiny_tokenizer, tmp_path / "long", run_config(max_seq_length=30))
    assert not (tmp_path / "long").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_an_existing_read_only_output_folder_fails_before_training(tiny_tokenizer, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    with pytest.raises(PermissionError, match="Cannot write to the output folder"):
        run(tiny_tokenizer, folder, run_config())
