import pytest
import torch

from cmow import CMOWForMaskedLM, CMOWForSequenceClassification, CMOWModel
from cmow.cli import main
from cmow.export import export_onnx, pairwise_product
from cmow.modeling_cmow import tree_product
from conftest import BATCH, PAD, D, random_ids, tiny_config

LENGTHS = [1, 7, 64, 1000]


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 13, 16])
def test_pairwise_product_equals_the_models_tree_product(length):
    matrices = torch.eye(D) + 0.5 * torch.randn(BATCH, length, D, D)
    torch.testing.assert_close(pairwise_product(matrices, levels=4), tree_product(matrices), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):
        pairwise_product(torch.randn(BATCH, 17, D, D), levels=4)  # longer than 2**levels: an error, not a product


def run_onnx(path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    onnxruntime = pytest.importorskip("onnxruntime", reason="pip install cmow[onnx]")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    return torch.from_numpy(output)


def padded_batch(length: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with every row but the first padded to a different length."""
    input_ids = random_ids(batch, length, generator_seed=length)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):
        keep = max(1, length * row // (batch + 1))
        attention_mask[row, keep:], input_ids[row, keep:] = 0, PAD
    return input_ids, attention_mask


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(embedding_size=13, initializer_range=0.05),
        tiny_config(encoder="cmow", bidirectional=False, matrix_size=20, initializer_range=0.01),
        tiny_config(encoder="cbow", bidirectional=False, cbow_pooling="sum"),
    ],
    ids=["hybrid-bidirectional-pooler", "cmow-d20", "cbow"],
)
def test_onnx_graph_equals_the_model_at_any_length_and_batch(config, tmp_path):
    # Token matrices near the identity, as initialised and trained (far from it, products of 1,000 random matrices
    # are ill-conditioned and any two fp32 implementations differ by ~1e-5; see check_onnx).
    model = CMOWModel(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx", check=False)
    for length in LENGTHS:
        for batch in (1, BATCH):
            input_ids, attention_mask = padded_batch(length, batch)
            with torch.inference_mode():
                expected = model(input_ids, attention_mask).pooler_output
            # rtol for the CBOW sums of 1,000 vectors (|x| ~ 50); the products are within 1e-5 absolute.
            torch.testing.assert_close(run_onnx(path, input_ids, attention_mask), expected, rtol=1e-5, atol=1e-5)


def test_onnx_classifier_logits_and_the_built_in_check(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install cmow[onnx]")
    model = CMOWForSequenceClassification(tiny_config(num_labels=3, initializer_range=0.05)).eval()
    path = export_onnx(model, tmp_path / "classifier.onnx")  # check=True runs onnxruntime against the model
    input_ids, attention_mask = padded_batch(64)
    with torch.inference_mode():
        expected = model(input_ids, attention_mask).logits
    torch.testing.assert_close(run_onnx(path, input_ids, attention_mask), expected, rtol=0, atol=1e-5)


def test_texts_longer_than_max_length_fail_in_the_runtime_instead_of_giving_a_wrong_vector(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install cmow[onnx]")
    model = CMOWModel(tiny_config()).eval()
    path = export_onnx(model, tmp_path / "short.onnx", max_length=16, check=False)
    input_ids, attention_mask = padded_batch(16)
    with torch.inference_mode():
        expected = model(input_ids, attention_mask).pooler_output
    torch.testing.assert_close(run_onnx(path, input_ids, attention_mask), expected, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="[Rr]eshape"):
        run_onnx(path, *padded_batch(17))


@pytest.mark.parametrize(
    "model",
    [
        CMOWForMaskedLM(tiny_config()),
        CMOWForSequenceClassification(tiny_config(num_labels=2, pair_encoding="diffcat")),
    ],
    ids=["masked-lm", "diffcat"],
)
def test_what_cannot_be_exported_fails_before_exporting(model, tmp_path):
    with pytest.raises(ValueError, match=r"export_onnx\(model.cmow"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    with pytest.raises(ValueError, match="hashed n-grams"):
        export_onnx(CMOWModel(tiny_config(ngram_orders=(2,), ngram_buckets=17)), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        export_onnx(CMOWModel(tiny_config()).half(), tmp_path / "model.onnx")


def test_cmow_export_onnx_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="pip install cmow[onnx]")
    model = CMOWModel(tiny_config(initializer_range=0.05)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    assert main(["export", "onnx", str(tmp_path / "checkpoint"), str(tmp_path / "model.onnx"), "--no-check"]) == 0
    assert "output sentence_embedding" in capsys.readouterr().out
    input_ids, attention_mask = padded_batch(7)
    with torch.inference_mode():
        expected = model(input_ids, attention_mask).pooler_output
    torch.testing.assert_close(
        run_onnx(tmp_path / "model.onnx", input_ids, attention_mask), expected, atol=1e-5, rtol=0
    )
