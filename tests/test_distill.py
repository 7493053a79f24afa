"""General distillation with tiny random BERT teachers and the 99-token WordPiece tokenizer of conftest."""

import json
import logging
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertModel

from cmow import CMOWForMaskedLM, CMOWModel
from cmow.cli import main
from cmow.distill import DistillationConfig, TeacherPooling, distill, distill_from_model
from cmow.distill.augmentation import add_word_order_copies
from cmow.distill.checkpoints import latest_checkpoint
from cmow.distill.cli import settings_from
from cmow.distill.corpus import corpus_fingerprint, first_text, load_corpus
from cmow.distill.launch import requested_processes, warn_if_fewer_processes
from cmow.distill.objectives import contrastive_loss, kd_loss, order_loss, relational_loss, swap_detection_loss
from cmow.distill.teacher import read_pooling, teacher_targets
from cmow.hub import files_to_upload
from cmow.training import token_tables
from conftest import PAD, VOCAB, WORDS, tiny_config


def corpus_texts(count: int = 40, seed: int = 0) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (count,), generator=generator)
    return [" ".join(WORDS[i] for i in torch.randint(0, 20, (int(n),), generator=generator)) for n in lengths]


def tiny_teacher(cls=BertForMaskedLM, vocab_size: int = VOCAB):
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=13,
        max_position_embeddings=17,
        pad_token_id=PAD,
    )
    return cls(config).eval()


def run_config(**overrides) -> DistillationConfig:
    settings = dict(
        batch_size=3, max_seq_length=7, max_steps=30, warmup_steps=2, learning_rate=3e-2, logging_steps=5,
        save_steps=0, shuffle_buffer_size=0, num_epochs=100, report_to="none",
    )  # fmt: skip
    settings.update(overrides)
    return DistillationConfig(**settings)


def logged_losses(caplog) -> list[float]:
    """The losses of the trainer's ``step N: loss X ...`` log lines."""
    lines = [r.getMessage() for r in caplog.records if r.name == "cmow.distill.trainer" and r.msg.startswith("step")]
    return [float(line.split("loss ")[1].split()[0]) for line in lines]


def test_kd_loss_known_values():
    teacher = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # (batch 1, seq 2, vocab 2)
    student = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1]])
    p = torch.softmax(torch.tensor([2.0, 0.0]) / 2, dim=0)
    kl_second = (p * (p / 0.5).log()).sum()  # KL(p || uniform); the first position matches exactly
    expected = 4 * kl_second / 2  # T^2 * mean over the two positions
    assert torch.allclose(kd_loss(student, teacher, mask, temperature=2.0), expected)
    assert kd_loss(student, teacher, torch.tensor([[1, 0]]), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_mlm_teacher_lowers_loss_and_saves_masked_lm(tiny_tokenizer, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cmow.distill.trainer")
    student = CMOWForMaskedLM(tiny_config())
    dataset = datasets.Dataset.from_dict({"text": corpus_texts()})
    distill_from_model(
        tiny_teacher(), tiny_tokenizer, student, dataset, tmp_path, run_config(), teacher_name="tiny-bert-mlm"
    )
    losses = logged_losses(caplog)
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, CMOWForMaskedLM)
    assert reloaded.config.teacher == "tiny-bert-mlm"
    assert reloaded.config.distillation["objective"] == "mlm" and reloaded.config.distillation["steps"] == 30
    assert (
        "masked-LM distillation: 5 x T^2 KL(teacher || student) at T = 2 + 2 x MLM"
        in (tmp_path / "README.md").read_text()
    )
    assert {"modeling_cmow.py", "configuration_cmow.py", "README.md", "tokenizer.json"} <= set(os.listdir(tmp_path))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_hidden_teacher_lowers_loss_and_saves_plain_encoder(tiny_tokenizer, tmp_path, caplog, sparse):
    caplog.set_level(logging.DEBUG, logger="cmow.distill.trainer")
    config = run_config(hidden_loss="mse+cosine", sparse_embeddings=sparse, alpha_token=1.0)
    pooling = TeacherPooling("mean", normalize=True)
    student = CMOWModel(tiny_config(embedding_size=12))
    dataset = datasets.Dataset.from_dict({"text": corpus_texts()})
    distill_from_model(
        tiny_teacher(BertModel), tiny_tokenizer, student, dataset, tmp_path, config, teacher_pooling=pooling
    )
    losses = logged_losses(caplog)
    assert losses[-1] < 0.8 * losses[0], losses
    assert not any("projection" in name for name in load_file(tmp_path / "model.safetensors"))
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, CMOWModel) and reloaded.config.distillation["objective"] == "hidden"
    card = (tmp_path / "README.md").read_text()
    sentence, token = "1 x MSE + 1 - cos to the teacher's sentence embedding", "1 x per-token MSE + 1 - cos"
    assert (
        f"**Objective:** hidden-state distillation: {sentence} + {token} to the teacher's last hidden states" in card
    )
    assert not any(table.sparse for table in token_tables(student))  # the user's model is handed back as it came


def test_teacher_cache_reproduces_the_uncached_run(tiny_tokenizer, tmp_path):
    dataset = datasets.Dataset.from_dict({"text": corpus_texts(12)})  # 4 batches per epoch, 3 epochs
    config = run_config(max_steps=12, cache_dir=str(tmp_path / "cache"))
    weights = []
    for run in ("cold", "warm"):
        torch.manual_seed(0)
        student = CMOWModel(tiny_config(embedding_size=12))
        teacher = tiny_teacher(BertModel)
        distill_from_model(teacher, tiny_tokenizer, student, dataset, tmp_path / run, config, corpus_name="texts")
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6)


def test_resumed_run_ends_with_the_same_weights(tiny_tokenizer, tmp_path):
    dataset = datasets.Dataset.from_dict({"text": corpus_texts(20)})  # 7 batches per epoch: resumption mid-epoch 2
    config = run_config(max_steps=10, save_steps=5, shuffle_buffer_size=5)

    def run(folder, stop_at=None, resume=False):
        torch.manual_seed(0)
        student = CMOWForMaskedLM(tiny_config())
        settings = {**config.__dict__, "stop_at_step": stop_at}
        distill_from_model(
            tiny_teacher(), tiny_tokenizer, student, dataset, folder, DistillationConfig(**settings), resume=resume
        )

    run(tmp_path / "straight")
    run(tmp_path / "interrupted", stop_at=5)
    assert latest_checkpoint(tmp_path / "interrupted").name == "step-5"
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()
    run(tmp_path / "interrupted", resume=True)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)


def test_two_process_launch_from_folders(tiny_tokenizer, tmp_path):
    teacher_dir = tmp_path / "teacher"
    tiny_teacher().save_pretrained(teacher_dir)
    tiny_tokenizer.save_pretrained(teacher_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts(30)) + "\n\n")
    command = [
        # accelerate 1.15's `launch --cpu --num_processes 2` starts one process without MPI; this starts two.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cmow.cli", "distill",
        "--teacher", str(teacher_dir), "--corpus", str(corpus), "--output-dir", str(tmp_path / "student"),
        "--matrix-size", "3", "--cbow-size", "5", "--batch-size", "3", "--max-seq-length", "7", "--max-steps", "4",
        "--save-steps", "2", "--report-to", "none",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Saved the distilled student") == 1  # the report comes from the main process only
    assert "on 2 process(es)" in result.stderr and "asked for" not in result.stderr
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["distillation"]["objective"] == "mlm" and saved["teacher"] == "teacher (local folder)"
    assert saved["vocab_size"] == VOCAB and saved["matrix_size"] == 3
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(tmp_path / "student/checkpoints/step-4"))


def save_teacher_folder(tokenizer, folder, cls=BertForMaskedLM):
    tiny_teacher(cls).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_published_files_name_the_local_teacher_and_corpus_without_their_paths(tiny_tokenizer, tmp_path):
    teacher_dir = save_teacher_folder(tiny_tokenizer, tmp_path / "tiny-bert")
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(corpus_texts(12)) + "\n")
    output = tmp_path / "student"
    small = {"matrix_size": 3, "cbow_size": 5}
    distill(str(teacher_dir), [str(corpus)], output, student_config=small, config=run_config(max_steps=2))
    saved = json.loads((output / "config.json").read_text())
    assert saved["teacher"] == "tiny-bert (local folder)"
    assert saved["distillation"]["corpus"] == "texts.txt (local file)"
    assert "**Data:** texts.txt (local file)" in (output / "README.md").read_text()
    for path in files_to_upload(output):
        assert str(tmp_path).encode() not in path.read_bytes(), path.name


def test_mismatched_or_incapable_teachers_fail_before_training(tiny_tokenizer, tmp_path):
    dataset = datasets.Dataset.from_dict({"text": corpus_texts(6)})
    with pytest.raises(ValueError, match="vocab_size"):
        student = CMOWModel(tiny_config(vocab_size=101))
        distill_from_model(tiny_teacher(BertModel), tiny_tokenizer, student, dataset, tmp_path, run_config())
    with pytest.raises(ValueError, match="tokenizer has 99 tokens"):
        student = CMOWModel(tiny_config(vocab_size=97))
        distill_from_model(tiny_teacher(BertModel, 97), tiny_tokenizer, student, dataset, tmp_path, run_config())
    with pytest.raises(ValueError, match="masked-LM head"):
        student = CMOWForMaskedLM(tiny_config())
        distill_from_model(
            tiny_teacher(BertModel), tiny_tokenizer, student, dataset, tmp_path, run_config(objective="mlm")
        )
    with pytest.raises(ValueError, match="cache works with the 'hidden' objective"):
        student = CMOWForMaskedLM(tiny_config())
        config = run_config(cache_dir=str(tmp_path / "cache"))
        distill_from_model(tiny_teacher(), tiny_tokenizer, student, dataset, tmp_path, config)
    assert not list(tmp_path.iterdir())


def test_bad_corpora_get_clear_errors(tiny_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt.gz")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        first_text(load_corpus(blank), "text")
    with pytest.raises(ValueError, match="no column 'text'"):
        first_text(datasets.Dataset.from_dict({"sentence": ["w1 w2"]}), "text")
    with pytest.raises(ValueError, match="corpus is empty"):
        student = CMOWModel(tiny_config(embedding_size=12))
        empty = datasets.Dataset.from_dict({"text": ["", "  "]})
        distill_from_model(tiny_teacher(BertModel), tiny_tokenizer, student, empty, tmp_path, run_config())


def test_corpus_folders_and_hub_ids_load_as_the_cli_passes_them(tmp_path, monkeypatch):
    folder = tmp_path / "corpus_dir"
    folder.mkdir()
    (folder / "part.txt").write_text("w1 w2\nw3\n")
    assert [row["text"] for row in load_corpus([str(folder)])] == ["w1 w2", "w3"]  # `--corpus corpus_dir`
    opened = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, **kwargs: opened.append((path, name)))
    load_corpus(["user/corpus"], "en")  # `--corpus user/corpus --corpus-config-name en`
    assert opened == [("user/corpus", "en")]


def test_corpus_fingerprint_follows_the_contents_not_only_size_and_time(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("w1 w2\nw3 w4\n")
    large.write_bytes(bytes(range(256)) * (40 << 10))  # 10 MiB: sampled (first and last block among them)
    for path, offset in ((small, 0), (large, (10 << 20) - 1)):
        before, times = corpus_fingerprint([str(path)]), path.stat()
        with path.open("r+b") as file:  # rewritten in place: same size, and the same time restored
            file.seek(offset)
            file.write(b"X")
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
        assert corpus_fingerprint([str(path)]) != before, path.name
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("w1\n")
    before = corpus_fingerprint(str(folder))
    (folder / "b.txt").write_text("w2\n")
    assert corpus_fingerprint(str(folder)) != before
    assert corpus_fingerprint("user/corpus", "en") != corpus_fingerprint("user/corpus", "de")


def test_teacher_cache_misses_after_the_corpus_file_is_rewritten(tiny_tokenizer, tmp_path):
    teacher_dir = save_teacher_folder(tiny_tokenizer, tmp_path / "teacher", BertModel)
    corpus = tmp_path / "texts.txt"
    lines = corpus_texts(9)
    corpus.write_text("\n".join(lines) + "\n")
    times = corpus.stat()
    config = run_config(max_steps=2, cache_dir=str(tmp_path / "cache"))
    small = {"matrix_size": 3, "cbow_size": 5}
    distill(str(teacher_dir), str(corpus), tmp_path / "first", student_config=small, config=config)
    corpus.write_text("\n".join(reversed(lines)) + "\n")  # other texts per batch, same size and time
    os.utime(corpus, ns=(times.st_atime_ns, times.st_mtime_ns))
    distill(str(teacher_dir), str(corpus), tmp_path / "second", student_config=small, config=config)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # two keys: no stale targets were read


def test_a_missing_teacher_folder_is_named_before_anything_loads(tmp_path):
    for teacher in (str(tmp_path / "no-teacher"), "./no-teacher", "models/bert/base"):
        with pytest.raises(FileNotFoundError, match="Teacher folder .* does not exist"):
            distill(teacher, [str(tmp_path / "unread.txt")], tmp_path / "out")


def test_sentence_transformers_pooling_is_read_from_the_folder(teacher_path, tmp_path):
    assert read_pooling(teacher_path) == TeacherPooling("mean", normalize=True)
    assert read_pooling(tmp_path) is None


def test_config_file_values_are_overridden_by_flags(tmp_path):
    from cmow.cli import build_parser

    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"max_steps": 7, "learning_rate": 0.5, "matrix_size": 3, "corpus": ["a.txt"]}))
    args = build_parser("distill").parse_args(["distill", "--config", str(config_file), "--learning-rate", "0.25"])
    settings = settings_from(args)
    assert (settings["max_steps"], settings["learning_rate"], settings["matrix_size"]) == (7, 0.25, 3)
    config_file.write_text(json.dumps({"max_stpes": 7}))
    with pytest.raises(ValueError, match="unknown settings max_stpes"):
        settings_from(build_parser("distill").parse_args(["distill", "--config", str(config_file)]))


def test_contrastive_loss_known_values():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: s0.t0 = 1, s0.t1 = 1/sqrt2, s1.t0 = 0, s1.t1 = 1/sqrt2; temperature 0.5 doubles them
    logits = torch.tensor([[1.0, 2**-0.5], [0.0, 2**-0.5]]) / 0.5
    expected = -(logits[0, 0] - logits[0].logsumexp(0) + logits[1, 1] - logits[1].logsumexp(0)) / 2
    assert contrastive_loss(student, teacher, temperature=0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_relational_loss_known_values():
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # student cosines (0,1)=1 (0,2)=0 (1,2)=0; teacher (0,1)=0 (0,2)=0 (1,2)=1: two of three pairs differ by 1
    assert relational_loss(student, teacher).item() == pytest.approx(2 * 2 / 6)
    assert relational_loss(teacher, 5 * teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_word_order_copies_are_deterministic_and_swap_two_adjacent_words():
    texts = ["a b c d", "x y", "same same", "one"]
    augmented, originals = add_word_order_copies(texts, rate=1.0, seed=3, index=7)
    assert augmented[: len(texts)] == texts
    assert (augmented, originals) == add_word_order_copies(texts, 1.0, seed=3, index=7)
    assert originals == [0, 1]  # "same same" and "one" have no pair of different adjacent words
    for original, copy in zip(originals, augmented[len(texts) :], strict=True):
        assert copy != texts[original] and sorted(copy.split()) == sorted(texts[original].split())
    assert add_word_order_copies(texts, 0.0, seed=3, index=7) == (texts, [])


def test_order_loss_matches_the_direction_of_the_teachers_change():
    teacher = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]])  # rows 0, 1 are texts; row 2 copies row 0
    student = torch.tensor([[2.0, 0.0], [9.0, 9.0], [0.0, 2.0]])  # the same change, twice as large
    originals = torch.tensor([0])
    assert order_loss(student, teacher, originals).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.tensor([[0.0, 1.0], [9.0, 9.0], [1.0, 0.0]])
    assert order_loss(opposite, teacher, originals).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs word-swapped copies"):
        DistillationConfig(alpha_order=1.0)


def test_teacher_sentence_targets_in_length_chunks_equal_the_padded_batchs(tiny_tokenizer):
    teacher = tiny_teacher(BertModel).eval()
    texts = corpus_texts(37) + [" ".join(WORDS[:15])]  # one long text pads the others
    batch = dict(tiny_tokenizer(texts, padding=True, truncation=True, max_length=17, return_tensors="pt"))
    pooling = TeacherPooling()
    with torch.no_grad():
        chunked = teacher_targets(teacher, batch, "hidden", pooling, token_states=False)["sentence"]
        padded = teacher_targets(teacher, batch, "hidden", pooling, token_states=True)["sentence"]
    assert chunked.shape == padded.shape == (38, teacher.config.hidden_size)
    torch.testing.assert_close(chunked, padded, atol=1e-5, rtol=1e-5)


def test_swap_detection_loss_is_the_cross_entropy_of_copies_against_their_originals():
    logits = torch.tensor([2.0, 7.0, -1.0, 0.5])  # rows 0-2 are texts; row 3 copies row 2, so rows 0, 1 do not count
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.5))) / 2  # -log(1 - sigma(-1)), -log sigma(0.5)
    assert swap_detection_loss(logits, torch.tensor([2])).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="`alpha_swap` needs word-swapped copies"):
        DistillationConfig(alpha_swap=1.0)


def test_static_initialisation_and_extra_terms_train_and_are_recorded(tiny_tokenizer, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cmow.distill.trainer")
    config = run_config(
        alpha_token=0.0,
        alpha_contrastive=1.0,
        alpha_relational=1.0,
        order_augmentation=1.0,  # every batch has copies, so every logged step has an order term
        alpha_order=1.0,
        alpha_swap=1.0,
        init_weighting="sif",
    )
    student = CMOWModel(tiny_config(embedding_size=12))
    dataset = datasets.Dataset.from_dict({"text": corpus_texts()})
    distill_from_model(tiny_teacher(BertModel), tiny_tokenizer, student, dataset, tmp_path, config)
    losses = logged_losses(caplog)
    assert losses[-1] < losses[0], losses
    last = [r.getMessage() for r in caplog.records if r.name == "cmow.distill.trainer" and r.msg.startswith("step")][
        -1
    ]
    assert (
        all(f"{term} " in last for term in ("sentence", "contrastive", "relational", "order", "swap"))
        and "token " not in last
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["embedding_size"] == 12
    assert saved["distillation"]["init"] == "static" and saved["distillation"]["init_weighting"] == "sif"


def test_cli_run_logs_losses_and_prints_next_steps_that_work_outside_the_venv(
    tiny_tokenizer, tmp_path, capsys, caplog
):
    teacher_dir, corpus, student = tmp_path / "teacher", tmp_path / "corpus.txt", tmp_path / "student"
    tiny_teacher(BertModel).save_pretrained(teacher_dir)
    tiny_tokenizer.save_pretrained(teacher_dir)
    corpus.write_text("\n".join(corpus_texts(12)) + "\n")
    arguments = [
        "distill", "--teacher", str(teacher_dir), "--corpus", str(corpus), "--output-dir", str(student),
        "--matrix-size", "3", "--cbow-size", "5", "--batch-size", "3", "--max-seq-length", "7", "--max-steps", "2",
        "--logging-steps", "1", "--save-steps", "0", "--report-to", "none",
    ]  # fmt: skip
    assert main(arguments) == 0
    assert len(logged_losses(caplog)) == 2  # a log file gets the losses, not only the progress bar
    printed = capsys.readouterr().out
    python_hint, evaluate_hint, _ = printed.split("Next:\n")[1].splitlines()
    assert shlex.split(evaluate_hint)[:2] == [str(Path(sys.executable).with_name("cmow")), "evaluate"]
    # The hint runs as printed in a shell whose PATH has no virtual environment.
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(python_hint, shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "torch.Size([1, 12])"  # the sentence embedding in the teacher's 12 dimensions


def test_a_launch_that_started_fewer_processes_than_asked_warns(caplog, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launcher = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes", "2", "-m", "cmow.cli"]
    assert requested_processes(launcher) == 2
    assert requested_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=3", "x.py"]) == 3
    assert requested_processes(["bash"]) is None and requested_processes(["accelerate", "launch", "x.py"]) is None
    with caplog.at_level(logging.WARNING, logger="cmow.distill.launch"):
        assert warn_if_fewer_processes(1, "cpu", launcher)
        assert not warn_if_fewer_processes(2, "cpu", launcher)
        assert not warn_if_fewer_processes(1, "cpu", ["bash"])
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert warn_if_fewer_processes(1, "cpu", ["bash"])
    assert "asked for 2 processes, but this run has 1" in caplog.text and "--multi_gpu" in caplog.text
