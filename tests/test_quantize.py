"""Weight storage: int8 rows with scales and float16, through save_pretrained, from_pretrained, remote code and CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertConfig, BertModel

from cmow import CMOWForSequenceClassification, CMOWModel
from cmow.cli import main
from cmow.modeling_cmow import quantize_rows
from cmow.quantize import folder_size, quantize_folder
from conftest import random_ids, run_without_cmow, tiny_config


def test_int8_rows_restore_each_entry_within_half_a_step_of_its_row():
    weight = torch.randn(9, 13) * torch.logspace(-3, 2, 9)[:, None]  # rows of very different sizes
    weight[4] = 0.0
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and scale.shape == (9, 1) and scale.dtype == torch.float32
    assert (q.float() * scale - weight).abs().le(scale / 2 + 1e-12).all()
    assert q.abs().amax(dim=1)[torch.arange(9) != 4].eq(127).all() and q[4].eq(0).all()  # full range; a zero row


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight away from its initialisation, as training does."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def test_int8_checkpoints_store_int8_rows_and_load_back_as_float32(tmp_path):
    model = trained_like(CMOWForSequenceClassification(tiny_config(num_labels=3, embedding_size=11)))
    model.save_pretrained(tmp_path, weight_storage="int8")
    assert model.config.weight_storage == "float"  # the model in memory is unchanged
    stored = load_file(tmp_path / "model.safetensors")
    tables = ["cmow.encoder.cbow_embeddings", "cmow.encoder.cmow_embeddings", "cmow.encoder.cmow_bw_embeddings"]
    for name in [*tables, "cmow.pooler.dense"]:
        assert stored[f"{name}.weight"].dtype == torch.int8 and f"{name}.weight_scale" in stored
    assert stored["classifier.layers.4.weight"].dtype == torch.float32  # heads stay float
    assert json.loads((tmp_path / "config.json").read_text())["weight_storage"] == "int8"

    reloaded = CMOWForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.weight_storage == "float" and set(reloaded.state_dict()) == set(model.state_dict())
    for name in [*tables, "cmow.pooler.dense"]:
        original, restored = model.get_submodule(name).weight, reloaded.get_submodule(name).weight
        assert restored.dtype == torch.float32
        offset = torch.eye(4).flatten() if "cmow_" in name else 0.0  # matrices are stored relative to the identity
        _, scale = quantize_rows(original.detach() - offset)
        assert (restored - original).abs().le(scale / 2 + 1e-6).all(), name
    input_ids = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0.05)
    # A loaded int8 model is an ordinary float model: saving it again (e.g. by the Trainer) writes float32.
    reloaded.save_pretrained(tmp_path / "again")
    assert load_file(tmp_path / "again" / "model.safetensors")[
        "cmow.encoder.cbow_embeddings.weight"
    ].is_floating_point()


def test_bad_weight_storage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'float' or 'int8'"):
        CMOWModel(tiny_config()).save_pretrained(tmp_path, weight_storage="int4")
    with pytest.raises(ValueError, match="weight_storage"):
        tiny_config(weight_storage="int4")


REMOTE_INT8_CHECK = """
import torch
from transformers import AutoModel, BertConfig, BertModel

folder, expected_file = sys.argv[1:]
expected = torch.load(expected_file)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert "transformers_modules" in type(model).__module__ and model.config.weight_storage == "float"
assert model.encoder.cbow_embeddings.weight.dtype == torch.float32
with torch.inference_mode():
    assert torch.equal(model(expected["input_ids"]).pooler_output, expected["pooled"])
print("int8 remote code OK")
"""


def test_int8_checkpoints_load_as_remote_code_without_cmow(tmp_path, torch_path):
    trained_like(CMOWModel(tiny_config(embedding_size=11))).save_pretrained(tmp_path / "int8", weight_storage="int8")
    local = AutoModel.from_pretrained(tmp_path / "int8").eval()
    input_ids = random_ids()
    with torch.inference_mode():
        expected = {"input_ids": input_ids, "pooled": local(input_ids).pooler_output}
    torch.save(expected, tmp_path / "expected.pt")
    result = run_without_cmow(REMOTE_INT8_CHECK, str(tmp_path / "int8"), str(tmp_path / "expected.pt"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8 remote code OK" in result.stdout


@pytest.mark.parametrize("storage, ratio", [("int8", 0.3), ("float16", 0.55)])
def test_cli_copies_a_checkpoint_with_smaller_weights_that_embed_alike(
    tiny_tokenizer, tmp_path, capsys, storage, ratio
):
    source = tmp_path / "full"
    model = trained_like(CMOWModel(tiny_config(vocab_size=2000, cbow_size=63, matrix_size=7, embedding_size=11)))
    model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    assert main(["quantize", str(source), str(tmp_path / storage), "--storage", storage]) == 0
    assert f"Wrote {tmp_path / storage}" in capsys.readouterr().out
    full_weights, small_weights = (folder / "model.safetensors" for folder in (source, tmp_path / storage))
    assert small_weights.stat().st_size < ratio * full_weights.stat().st_size
    assert {"tokenizer.json", "modeling_cmow.py", "README.md"} <= {p.name for p in (tmp_path / storage).iterdir()}
    card = (tmp_path / storage / "README.md").read_text()
    assert ("int8 rows with float32 scales" if storage == "int8" else "safetensors, float16") in card
    small = AutoModel.from_pretrained(tmp_path / storage)
    texts = ["w1 w2 w3", "w7 w7", "w5 w9 w11 w2 w40"]
    cosines = torch.cosine_similarity(small.encode(texts).float(), model.encode(texts, tokenizer=tiny_tokenizer))
    assert cosines.min() > 0.999, cosines
    assert folder_size(tmp_path / storage) < folder_size(source)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["full", storage])  # no staging folder left
    with pytest.raises(FileExistsError, match="already holds a model"):
        quantize_folder(source, tmp_path / storage, storage)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        quantize_folder(source, tmp_path / "occupied", storage)
    with pytest.raises(ValueError, match="another folder"):
        quantize_folder(source, source, storage)
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=99, hidden_size=12, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        bert
    )
    with pytest.raises(ValueError, match="CMOW checkpoints only"):
        quantize_folder(bert, tmp_path / "bert-int8", storage)
