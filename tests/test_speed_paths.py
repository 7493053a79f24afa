"""The fast paths of the encoder equal the plain reference computations."""

import sys

import pytest
import torch

from cmow import CMOWModel, modeling_cmow
from cmow.modeling_cmow import normalize_product, tree_order, tree_product, tree_reduce
from conftest import BATCH, VOCAB, D, random_ids, tiny_config


def reference_product(matrices: torch.Tensor) -> torch.Tensor:
    """Left-to-right product in float64, rescaled once at the end: (batch, d, d)."""
    product = matrices[:, 0].double()
    for position in range(1, matrices.shape[1]):
        product = normalize_product(product @ matrices[:, position].double())
    return normalize_product(product)


@pytest.mark.parametrize("length", range(1, 19))
def test_tree_order_is_a_permutation_that_pairs_the_halves(length):
    order = tree_order(length)
    assert sorted(order) == list(range(length))
    half = length // 2
    lefts, rights = order[:half], order[half : 2 * half]
    assert all(right == left + 1 and left % 2 == 0 for left, right in zip(lefts, rights, strict=True))
    if length % 2:
        assert order[-1] == length - 1


@pytest.mark.parametrize("length", [1, 2, 3, 6, 7, 11, 31, 33, 100])
def test_tree_reduce_in_tree_order_equals_the_reference_product(length):
    matrices = torch.eye(D) + 0.5 * torch.randn(BATCH, length, D, D)
    stored = matrices.transpose(0, 1)[torch.tensor(tree_order(length))].contiguous()  # (length, batch, d, d)
    expected = reference_product(matrices).float()
    torch.testing.assert_close(tree_reduce(stored), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tree_product(matrices), expected, rtol=1e-4, atol=1e-5)


def test_tree_product_leaves_its_input_unchanged_and_in_place_rescaling_matches_autograd():
    matrices = torch.eye(D) + 0.5 * torch.randn(BATCH, 13, D, D)
    copy = matrices.clone()
    with torch.inference_mode():
        fast = tree_product(matrices)
    torch.testing.assert_close(matrices, copy, rtol=0, atol=0)
    leaf = matrices.clone().requires_grad_()
    slow = tree_product(leaf)
    torch.testing.assert_close(fast, slow.detach())
    weights = torch.randn_like(slow)
    (slow * weights).sum().backward()
    reference_leaf = matrices.double().requires_grad_()
    (reference_product(reference_leaf) * weights.double()).sum().backward()
    torch.testing.assert_close(leaf.grad, reference_leaf.grad.float(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("encoder,bidirectional", [("hybrid", True), ("cmow", False), ("cbow", False)])
def test_pooled_fast_path_equals_the_pooled_token_states_path(encoder, bidirectional, kernel, monkeypatch):
    if not kernel:
        monkeypatch.delitem(sys.modules, "cmow._kernel", raising=False)
    model = CMOWModel(tiny_config(encoder=encoder, bidirectional=bidirectional)).eval()
    input_ids = random_ids(5, 9)
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 1:] = False
    input_ids[~mask] = 0
    with torch.inference_mode():
        pooled = model(input_ids, mask, output_token_states=False).pooler_output
        via_scan = model(input_ids, mask, output_token_states=True).pooler_output
    torch.testing.assert_close(pooled, via_scan, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_matrices", [100, 8192])
def test_large_batches_give_the_same_rows_as_single_texts(chunk_matrices, monkeypatch, torch_path):
    monkeypatch.setattr(modeling_cmow, "PRODUCT_CHUNK_MATRICES", chunk_matrices)  # 100: chunks of 5 rows
    model = CMOWModel(tiny_config(vocab_size=VOCAB)).eval()
    input_ids = random_ids(257, 17)
    with torch.inference_mode():
        together = model(input_ids, output_token_states=False).pooler_output
        torch.testing.assert_close(together, model(input_ids).pooler_output, rtol=1e-4, atol=1e-5)
        alone = torch.cat([model(row[None], output_token_states=False).pooler_output for row in input_ids[:5]])
    torch.testing.assert_close(together[:5], alone, rtol=1e-5, atol=1e-6)


def test_the_plain_forward_computes_no_per_token_prefix_products(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the default forward must not run the per-token scan")

    monkeypatch.setattr(modeling_cmow, "prefix_products", refuse)
    model = CMOWModel(tiny_config()).eval()
    output = model(random_ids(), attention_mask=torch.ones(BATCH, 7, dtype=torch.long))
    assert output.last_hidden_state is None and output.pooler_output.shape == (BATCH, model.config.hidden_size)
    with pytest.raises(AssertionError, match="per-token scan"):
        model(random_ids(), output_hidden_states=True)
