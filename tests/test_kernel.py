"""The compiled kernel (``cmow._kernel``, through ``compiled_pooled_features``) equals the torch path it replaces."""

import math
import os
import subprocess
import sys

import pytest
import torch

from cmow import CMOWConfig, CMOWForSequenceClassification, CMOWModel, encode
from cmow.glue.data import load_glue
from cmow.modeling_cmow import KERNEL_MODULE, compiled_pooled_features, ngram_bucket_ids, normalize_product
from conftest import CBOW, PAD, SEP, VOCAB, random_ids, script_without_extension, tiny_config

CLS = 2  # conftest.SPECIALS

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


# --- hashed n-grams: hashed and summed by the kernel -----------------------------------------------------------------


def ngram_model(orders: tuple[int, ...], buckets: int = 31, **overrides) -> CMOWModel:
    """A model with n-grams of ``orders`` (1 too, which the config refuses but the hash defines) and random n-gram
    vectors: they start at zero, and a wrong n-gram must show."""
    config = tiny_config(ngram_orders=tuple(n for n in orders if n > 1) or (2,), ngram_buckets=buckets, **overrides)
    model = CMOWModel(config).eval()
    model.encoder.ngram_embeddings.orders = orders
    with torch.no_grad():
        model.encoder.ngram_embeddings.weight[:-1].normal_()  # the padding row stays zero
    return model


@pytest.mark.parametrize("orders", [(2,), (2, 3), (1, 2, 3), (3, 5), (4,), (2, 12)])
@pytest.mark.parametrize("encoder,cbow_pooling", [("hybrid", "mean"), ("hybrid", "sum"), ("cbow", "mean")])
def test_hashed_ngrams_join_the_kernels_bag(orders, encoder, cbow_pooling, monkeypatch):
    # ragged_batch: padding, a hole in a mask, texts of 1 token and of none, texts shorter than the orders (12 > seq)
    model = ngram_model(orders, encoder=encoder, bidirectional=encoder == "hybrid", cbow_pooling=cbow_pooling)
    compiled, reference = both_paths(model, *ragged_batch(), monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    assert not compiled[5].any(), "a text with every position masked has no n-grams either"
    input_ids = random_ids(1, 2)  # batch 1, shorter than most orders, without a mask
    compiled, reference = both_paths(model, input_ids, None, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("buckets", [7, 1000, 2**18, 1_000_003])
@pytest.mark.parametrize("orders", [(2,), (1, 2, 3), (2, 5)])
def test_the_kernel_hits_the_buckets_of_ngram_bucket_ids(buckets, orders, monkeypatch):
    """N-gram vectors that code their row (count, row // 1024, row % 1024; sums of small integers, exact in
    float32) and no token vectors: each text's bag is the sum of the codes of the buckets the kernel hit."""
    model = ngram_model(orders, buckets, encoder="cbow", bidirectional=False, cbow_pooling="sum", cbow_size=3)
    rows = torch.arange(buckets)
    with torch.no_grad():
        model.encoder.cbow_embeddings.weight.zero_()
        model.encoder.ngram_embeddings.weight[:-1] = torch.stack([torch.ones(buckets), rows // 1024, rows % 1024], 1)
    input_ids, mask = ragged_batch(batch=6, seq=9, seed=3)
    input_ids = torch.cat([input_ids, random_ids(5, 9, generator_seed=4)])  # and full texts, large batch
    mask = torch.cat([mask, torch.ones(5, 9, dtype=torch.bool)])
    hit = ngram_bucket_ids(input_ids, mask, orders, buckets)  # (batch, orders, seq); `buckets` where none
    codes = torch.cat([model.encoder.ngram_embeddings.weight.detach(), torch.zeros(1, 3)])
    expected = codes[hit].sum(dim=(1, 2))  # (batch, 3)
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    assert torch.equal(compiled, expected)
    assert torch.equal(reference, expected)
    assert expected[:, 0].sum() > 0 and torch.equal(expected[5], torch.zeros(3))


@pytest.mark.parametrize("pair_encoding", ["diffcat", "diffcat_prod"])
def test_ngrams_of_pairs_through_the_model_forward(pair_encoding, monkeypatch):
    """Each side of a pair is the whole input with the other side masked out (and [CLS] kept on both): the kernel's
    n-grams must break where the torch path's do."""
    config = tiny_config(
        ngram_orders=(2, 3), ngram_buckets=41, pair_encoding=pair_encoding, num_labels=3, cls_token_id=CLS
    )
    model = CMOWForSequenceClassification(config).eval()
    with torch.no_grad():
        model.cmow.encoder.ngram_embeddings.weight[:-1].normal_()
    input_ids = random_ids(4, 11)
    input_ids[:, 0], input_ids[:, 4], input_ids[:, 8] = CLS, SEP, SEP  # [CLS] a a a [SEP] b b b [SEP] pad pad
    input_ids[:, 9:] = PAD
    attention_mask = (input_ids != PAD).long()
    attention_mask[3, 5:] = 0  # a single text: a pair with an empty second side
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:3, 5:9] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    with torch.inference_mode():
        compiled = model(**inputs).logits
        with monkeypatch.context() as patch:
            patch.delitem(sys.modules, KERNEL_MODULE)
            reference = model(**inputs).logits
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
    half = ngram_model((2, 3), matrix_size=20).to(dtype)
    widened = CMOWModel(half.config).eval()
    widened.load_state_dict({name: value.float() for name, value in half.state_dict().items()})
    input_ids, mask = ragged_batch()
    with torch.inference_mode():
        compiled = compiled_pooled_features(half.encoder, input_ids, mask)
    # The torch path on the same (rounded) weights in float32: the kernel reads the half table without more rounding.
    _, reference = both_paths(widened, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_threads_do_not_change_any_row():
    model = ngram_model((2, 3), matrix_size=20)
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
    model = ngram_model((2, 3))
    input_ids, mask = ragged_batch()
    both_paths(model, input_ids, mask, monkeypatch)  # remembers float32 tables
    encoder = model.encoder
    for module in (
        encoder.cmow_embeddings,
        encoder.cmow_bw_embeddings,
        encoder.cbow_embeddings,
        encoder.ngram_embeddings,
    ):
        old = module.weight.data
        half = torch.empty(0, dtype=torch.float16).set_(old.untyped_storage(), 0, old.shape)  # same address and shape
        half.copy_(old.clone())
        assert half.data_ptr() == old.data_ptr() and half.stride() == old.stride()
        module.weight = torch.nn.Parameter(half)
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-3, atol=1e-3)


def test_the_kernel_follows_a_changed_ngram_table(monkeypatch):
    model = ngram_model((2, 3))
    input_ids, mask = ragged_batch()
    both_paths(model, input_ids, mask, monkeypatch)  # remembers the n-gram table's arguments
    ngrams = model.encoder.ngram_embeddings
    ngrams.weight.data = ngrams.weight.data.flip(0).contiguous()  # the same parameter, other storage
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    ngrams.orders = (2, 4)  # the same table, other n-grams
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)
    model.encoder.ngram_embeddings = ngram_model((3,), buckets=13).encoder.ngram_embeddings  # other buckets
    compiled, reference = both_paths(model, input_ids, mask, monkeypatch)
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_an_ngram_table_the_kernel_cannot_read_sends_the_model_to_the_torch_path():
    model = ngram_model((2, 3))
    input_ids, mask = ragged_batch()
    ngrams = model.encoder.ngram_embeddings
    with torch.inference_mode():
        ngrams.weight = torch.nn.Parameter(ngrams.weight.double())  # a dtype the kernel does not read
        assert compiled_pooled_features(model.encoder, input_ids, mask) is None
        ngrams.weight = torch.nn.Parameter(ngrams.weight[:10].float())  # too few rows for its buckets
        assert compiled_pooled_features(model.encoder, input_ids, mask) is None


def test_the_call_of_older_remote_code_still_works_and_an_older_kernel_is_not_called(monkeypatch):
    """Checkpoints saved by older cmow versions ship remote code that calls ``pooled`` without the n-gram arguments
    (api 1); newer remote code must not call an older installed kernel with arguments it does not take."""
    model = CMOWModel(tiny_config(matrix_size=5)).eval()
    input_ids, mask = ragged_batch()
    with torch.inference_mode():
        compiled = compiled_pooled_features(model.encoder, input_ids, mask)
        hidden, vocab, d, forward, backward, code, cbow, cbow_size, *_ = model.encoder._kernel_tables_cache[1]
        old = torch.empty_like(compiled)
        kernel_module.pooled(
            old.data_ptr(),
            hidden,
            input_ids.data_ptr(),
            mask.data_ptr(),
            *input_ids.shape,
            vocab,
            d,
            forward,
            backward,
            code,
            cbow,
            cbow_size,
            code,
            model.encoder.cbow_mean,
            1,
        )
        torch.testing.assert_close(old, compiled, rtol=0, atol=0)
        monkeypatch.setattr(kernel_module, "api", 1)
        assert compiled_pooled_features(model.encoder, input_ids, mask) is None


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
