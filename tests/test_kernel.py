"""The compiled kernel (``cmow._kernel``, through ``compiled_pooled_features``) equals the torch path it replaces."""

import math
import os
import subprocess
import sys

import pytest
import torch

from cmow import CMOWConfig, CMOWModel, encode
from cmow.glue.data import load_glue
from cmow.modeling_cmow import KERNEL_MODULE, compiled_pooled_features, normalize_product
from conftest import CBOW, PAD, SEP, VOCAB, random_ids, script_without_extension, tiny_config

kernel_module = pytest.importorskip(KERNEL_MODULE, reason="cmow was installed without its compiled kernel")
ISAS = kernel_module.isas  # the ISAs this CPU runs, the best (the default) last


@pytest.fixture(params=ISAS, autouse=True)
def isa(request):
    """Every test runs on the portable code and, where the CPU has them, on the AVX2/FMA and AVX-512 code."""
    best = kernel_module.isa
    kernel_module.set_isa(request.param)
    yield request.param
    kernel_module.set_isa(best)


def both_paths(model: CMOWModel, input_ids: torch.Tensor, mask: torch.Tensor, monkeypatch) -> tuple:
    """Pooled features from the kernel and from the torch path (the kernel hidden), in inference mode."""
    with torch.inference_mode():
        compiled = compiled_pooled_features(model.encoder, input_ids, mask)
        assert compiled is not None, "the kernel should apply here"
        with monkeypatch.context() as patch:
            patch.delitem(sys.modules, KERNEL_MODULE)
            reference = model.encoder(input_ids, mask, token_states=False)[1]
    return compiled, reference


def ragged_batch(batch: int = 6, seq: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of lengths seq..1, a row with a hole in its mask (a pair's side) and an all-masked row."""
    input_ids = random_ids(batch, seq, generator_seed=seed)
    mask = torch.arange(seq) < torch.tensor([seq, seq - 3, 1, seq, 4, 0])[:batch, None]
    mask[3, 2:5] = False  # inside the text, as when one side of a pair is masked out
    input_ids[~mask & (torch.arange(batch) != 3)[:, None]] = PAD
    return input_ids, mask


@pytest.mark.parametrize("d", [3, 5, 13, 20, 23, 32])
@pytest.mark.parametrize(
    "encoder,bidirectional,cbow_pooling",
    [("hybrid", True, "mean"), ("hybrid", False, "sum"), ("cmow", True, "mean"), ("cmow", False, "mean")],
)
def test_kernel_equals_the_torch_path(d, encoder, bidirectional, cbow_pooling, monkeypatch):
    config = tiny_config(matrix_size=d, encoder=encoder, bidirectional=bidirectional, cbow_pooling=cbow_pooling)
    model = CMOWModel(config).eval()
    compiled, reference = both_paths(model, *ragged_batch(), monkeypatch)
    assert compiled.shape == (6, config.hidden_size)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    assert not compiled[5].any(), "a text with every position masked encodes to zero"


def test_cbow_only_models_use_the_kernel_too(monkeypatch):
    model = CMOWModel(tiny_config(encoder="cbow", bidirectional=False)).eval()
    compiled, reference = both_paths(model, *ragged_batch(), monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cbow_pooling", ["mean", "sum"])
def test_hashed_ngrams_join_the_kernels_bag(cbow_pooling, monkeypatch):
    model = CMOWModel(tiny_config(ngram_orders=(2, 3), ngram_buckets=31, cbow_pooling=cbow_pooling)).eval()
    with torch.no_grad():
        model.encoder.ngram_embeddings.weight[:-1].normal_()  # they start at zero; the padding row stays zero
    compiled, reference = both_paths(model, *ragged_batch(), monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 16384])
def test_single_and_very_long_texts_stay_finite_and_match(length, monkeypatch):
    # Noise large enough that an unscaled product overflows within a few hundred tokens (see test_modeling_cmow).
    config = CMOWConfig(vocab_size=VOCAB, matrix_size=20, cbow_size=CBOW, initializer_range=0.5, sep_token_id=SEP)
    model = CMOWModel(config).eval()
    input_ids = random_ids(2, length)
    compiled, reference = both_paths(model, input_ids, torch.ones_like(input_ids, dtype=torch.bool), monkeypatch)
    assert torch.isfinite(compiled).all()
    products = compiled[:, CBOW:].reshape(2, 2, 20, 20) + torch.eye(20)
    torch.testing.assert_close(torch.linalg.matrix_norm(products), torch.full((2, 2), math.sqrt(20)))
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_kernel_gives_the_direction_of_the_true_product():
    config = tiny_config(matrix_size=7, encoder="cmow", bidirectional=True, initializer_range=0.3)
    model = CMOWModel(config).eval()
    input_ids = random_ids(3, 12)
    with torch.inference_mode():
        compiled = compiled_pooled_features(model.encoder, input_ids, torch.ones_like(input_ids, dtype=torch.bool))
    for table, part in ((model.encoder.cmow_embeddings, 0), (model.encoder.cmow_bw_embeddings, 1)):
        matrices = table.weight.detach().double()[input_ids].view(3, 12, 7, 7)
        matrices = matrices.flip(1) if part else matrices
        product = matrices[:, 0]
        for position in range(1, 12):
            product = product @ matrices[:, position]  # unscaled, in float64: the true product
        expected = normalize_product(product) - torch.eye(7, dtype=torch.float64)
        got = compiled[:, part * 49 : (part + 1) * 49].view(3, 7, 7).double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tables_are_widened_exactly(dtype, monkeypatch):
    half = CMOWModel(tiny_config(matrix_size=20)).eval().to(dtype)
    widened = CMOWModel(half.config).eval()
    widened.load_state_dict({name: value.float() for name, value in half.state_dict().items()})
    input_ids, mask = ragged_batch()
    with torch.inference_mode():
        compiled = compiled_pooled_features(half.encoder, input_ids, mask)
    # The torch path on the same (rounded) weights in float32: the kernel reads the half table without more rounding.
    _, reference = both_paths(widened, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_threads_do_not_change_any_row():
    model = CMOWModel(tiny_config(matrix_size=20)).eval()
    input_ids = random_ids(257, 40)
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            alone = compiled_pooled_features(model.encoder, input_ids, mask)
            torch.set_num_threads(3)
            shared = compiled_pooled_features(model.encoder, input_ids, mask)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, shared)


def test_the_model_uses_the_kernel_only_for_inference_on_supported_inputs():
    model = CMOWModel(tiny_config()).eval()
    input_ids = random_ids()
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    assert compiled_pooled_features(model.encoder, input_ids, mask) is None, "autograd on: the torch path trains"
    with torch.no_grad():
        assert compiled_pooled_features(model.encoder, input_ids, mask) is not None
        too_large = CMOWModel(tiny_config(matrix_size=kernel_module.max_matrix_size + 1)).eval()
        assert compiled_pooled_features(too_large.encoder, input_ids, mask) is None
        assert compiled_pooled_features(model.double().encoder, input_ids, mask) is None


@pytest.mark.parametrize("ngrams", [(), (2,)])
def test_no_mask_encodes_every_position(ngrams, monkeypatch):
    model = CMOWModel(tiny_config(ngram_orders=ngrams, ngram_buckets=31)).eval()
    input_ids = random_ids(3, 7)
    everywhere = torch.ones_like(input_ids, dtype=torch.bool)
    compiled, reference = both_paths(model, input_ids, None, monkeypatch)
    with torch.inference_mode():
        torch.testing.assert_close(compiled, compiled_pooled_features(model.encoder, input_ids, everywhere))
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_the_kernel_follows_tables_changed_after_a_call(monkeypatch):
    model = CMOWModel(tiny_config()).eval()
    input_ids, mask = ragged_batch()
    both_paths(model, input_ids, mask, monkeypatch)  # remembers the tables' arguments
    weight = model.encoder.cmow_embeddings.weight
    weight.data = weight.data.flip(0).contiguous()  # the same parameter, other storage
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    model.resize_token_embeddings(VOCAB + 6)
    with torch.no_grad():
        model.encoder.cmow_bw_embeddings.weight[VOCAB:] = torch.randn(6, model.config.matrix_size**2)
    input_ids[0, 0] = VOCAB + 5  # a new row: refused unless the kernel knows the new size
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_a_table_of_another_dtype_at_the_same_address_is_not_read_as_the_old_one(monkeypatch):
    """The allocator may give a converted table its old address: the remembered arguments must not outlive it."""
    model = CMOWModel(tiny_config()).eval()
    input_ids, mask = ragged_batch()
    both_paths(model, input_ids, mask, monkeypatch)  # remembers float32 tables
    for module in (model.encoder.cmow_embeddings, model.encoder.cmow_bw_embeddings, model.encoder.cbow_embeddings):
        old = module.weight.data
        half = torch.empty(0, dtype=torch.float16).set_(old.untyped_storage(), 0, old.shape)  # same address and shape
        half.copy_(old.clone())
        assert half.data_ptr() == old.data_ptr() and half.stride() == old.stride()
        module.weight = torch.nn.Parameter(half)
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-3, atol=1e-3)


def test_set_isa_switches_among_the_isas_this_cpu_runs(isa):
    assert kernel_module.isas[0] == "generic" and kernel_module.isa == isa
    with pytest.raises(ValueError, match="not available"):
        kernel_module.set_isa("avx1024")
    assert kernel_module.isa == isa, "a refused name leaves the code in use as it was"


def test_the_kernel_refuses_token_ids_outside_the_table():
    model = CMOWModel(tiny_config()).eval()
    input_ids = random_ids()
    input_ids[1, 2] = VOCAB
    with torch.inference_mode(), pytest.raises(ValueError, match="outside"):
        compiled_pooled_features(model.encoder, input_ids, torch.ones_like(input_ids, dtype=torch.bool))


def test_encode_of_real_sentences_equals_the_torch_path(tokenizer, shared_data, monkeypatch):
    texts = load_glue("SST-2", shared_data / "glue")["validation"]["text_a"][:300]
    model = CMOWModel(CMOWConfig(vocab_size=tokenizer.vocab_size, matrix_size=20, cbow_size=64)).eval()
    compiled = encode(model, tokenizer, texts, batch_size=64)
    monkeypatch.delitem(sys.modules, KERNEL_MODULE)
    torch.testing.assert_close(compiled, encode(model, tokenizer, texts, batch_size=64), rtol=1e-4, atol=1e-5)


NOT_BUILT_CHECK = script_without_extension(
    KERNEL_MODULE,
    """
import torch, cmow
from cmow.modeling_cmow import compiled_pooled_features
model = cmow.CMOWModel(cmow.CMOWConfig(vocab_size=50, matrix_size=4, cbow_size=3)).eval()
ids = torch.randint(1, 50, (2, 5)); mask = torch.ones_like(ids, dtype=torch.bool)
with torch.inference_mode():
    assert compiled_pooled_features(model.encoder, ids, mask) is None
    assert torch.isfinite(model(ids, output_token_states=False).pooler_output).all()
print("torch path OK")
""",
)


def test_without_the_built_kernel_cmow_warns_once_and_runs_the_torch_path():
    result = subprocess.run([sys.executable, "-c", NOT_BUILT_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch path OK" in result.stdout
    assert result.stderr.count("compiled kernel is not available") == 1, result.stderr[-3000:]


def test_the_torch_path_runs_when_the_extension_is_switched_off(tmp_path):
    script = (
        "import sys, torch, cmow\n"
        "assert 'cmow._kernel' not in sys.modules\n"
        "from cmow.modeling_cmow import compiled_pooled_features\n"
        "model = cmow.CMOWModel(cmow.CMOWConfig(vocab_size=50, matrix_size=4, cbow_size=3)).eval()\n"
        "ids = torch.randint(1, 50, (2, 5)); mask = torch.ones_like(ids, dtype=torch.bool)\n"
        "with torch.inference_mode():\n"
        "    assert compiled_pooled_features(model.encoder, ids, mask) is None\n"
        "    assert torch.isfinite(model(ids, output_token_states=False).pooler_output).all()\n"
        "print('torch path OK')\n"
    )
    env = {**os.environ, "CMOW_NO_EXTENSION": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch path OK" in result.stdout
    assert "compiled kernel" not in result.stderr, "switched off on purpose: no warning"
