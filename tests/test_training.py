"""Sparse token-table gradients: LazyAdamW against torch's AdamW, sparse clipping, and CMOWTrainer runs."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from cmow import CMOWForSequenceClassification
from cmow.modeling_cmow import ngram_bucket_ids
from cmow.training import CMOWTrainer, LazyAdamW, clip_grad_norm, sparse_token_tables, token_tables
from conftest import PAD, VOCAB, random_ids, tiny_config


def test_lazy_adamw_equals_adamw_on_dense_gradients():
    params = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    ours = LazyAdamW(params, lr=0.1, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)
    torch_adamw = torch.optim.AdamW(reference, lr=0.1, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for group, optimizer in ((params, ours), (reference, torch_adamw)):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


def test_sparse_gradients_update_touched_rows_like_adamw_and_leave_the_rest():
    torch.manual_seed(0)
    sparse_table = torch.nn.Embedding(11, 3, sparse=True)
    dense_table = torch.nn.Embedding(11, 3)
    dense_table.weight.data.copy_(sparse_table.weight.data)
    untouched = sparse_table.weight[8:].detach().clone()
    ours = LazyAdamW(sparse_table.parameters(), lr=0.05, weight_decay=0.1)
    torch_adamw = torch.optim.AdamW(dense_table.parameters(), lr=0.05, weight_decay=0.1)
    ids = torch.tensor([[0, 1, 2, 2], [3, 4, 5, 6], [7, 7, 1, 0]])  # rows 0..7, some twice: every step, all of them
    target = torch.randn(3, 4, 3)
    for _ in range(4):
        for table, optimizer in ((sparse_table, ours), (dense_table, torch_adamw)):
            optimizer.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            optimizer.step()
    assert sparse_table.weight.grad is not None and sparse_table.weight.grad.is_sparse
    torch.testing.assert_close(sparse_table.weight[:8], dense_table.weight[:8], rtol=1e-5, atol=1e-6)
    # Rows never looked up keep their values: no decay, no momentum (torch's AdamW decays them).
    torch.testing.assert_close(sparse_table.weight[8:], untouched, rtol=0, atol=0)
    assert not torch.equal(dense_table.weight[8:], untouched)


def test_sparse_clipping_matches_clip_grad_norm_on_the_dense_equivalent():
    sparse_table = torch.nn.Embedding(9, 4, sparse=True)
    linear = torch.nn.Linear(4, 2)
    ids = torch.tensor([1, 2, 2, 5])
    linear(sparse_table(ids)).pow(2).sum().backward()
    dense = [sparse_table.weight.grad.to_dense(), linear.weight.grad.clone(), linear.bias.grad.clone()]
    holders = [torch.nn.Parameter(torch.zeros_like(g)) for g in dense]
    for holder, g in zip(holders, dense, strict=True):
        holder.grad = g.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(holders, max_norm=0.5)
    norm = clip_grad_norm([sparse_table.weight, linear.weight, linear.bias], max_norm=0.5)
    torch.testing.assert_close(norm, expected_norm)
    assert norm > 0.5  # the clipping did something
    for ours, reference in zip((sparse_table.weight, linear.weight, linear.bias), holders, strict=True):
        torch.testing.assert_close(ours.grad.to_dense(), reference.grad, rtol=1e-5, atol=1e-6)


def test_sparse_token_tables_restores_dense_gradients():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2))
    assert len(token_tables(model)) == 3  # CBOW, forward and backward matrices
    with sparse_token_tables(model) as tables:
        assert all(table.sparse for table in tables)
        model(random_ids(), labels=torch.tensor([0, 1, 1])).loss.backward()
        assert all(table.weight.grad.is_sparse for table in tables)
    assert not any(table.sparse for table in token_tables(model))


def test_the_ngram_table_is_a_token_table_with_sparse_gradients_for_the_ngrams_seen():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, ngram_orders=(2,), ngram_buckets=50))
    ngrams = model.cmow.encoder.ngram_embeddings
    assert len(token_tables(model)) == 4 and ngrams in token_tables(model)
    input_ids = random_ids()
    input_ids[0, 5:] = PAD
    with sparse_token_tables(model):
        model(input_ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    seen = ngram_bucket_ids(input_ids, input_ids != PAD, (2,), 50)
    grad = ngrams.weight.grad.coalesce()
    assert ngrams.weight.grad.is_sparse and set(grad.indices()[0].tolist()) - {50} == set(seen[seen != 50].tolist())
    assert not grad.to_dense()[50].any()  # the padding row (positions without a bigram) gets no gradient


def _rows(count: int) -> Dataset:
    ids = random_ids(batch=count, seq=6, generator_seed=1)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})


def _args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=12,
        learning_rate=0.02,
        per_device_train_batch_size=4,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return TrainingArguments(**(settings | overrides))


def test_cmow_trainer_trains_with_sparse_gradients_and_clipping(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=2))
    data = _rows(24)
    used = set(torch.tensor(data["input_ids"]).unique().tolist())
    unused = sorted(set(range(VOCAB)) - used - {PAD})
    before = model.cmow.encoder.cmow_embeddings.weight[unused].detach().clone()
    trainer = CMOWTrainer(model=model, args=_args(tmp_path), train_dataset=data, eval_dataset=data)
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), LazyAdamW)  # accelerate wraps it
    assert trainer.evaluate()["eval_loss"] < start
    norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(norms) == 12 and all(torch.isfinite(torch.tensor(norms)))
    torch.testing.assert_close(model.cmow.encoder.cmow_embeddings.weight[unused], before, rtol=0, atol=0)
    assert not any(table.sparse for table in token_tables(model))  # a later stock optimizer still works


def test_cmow_trainer_trains_the_ngrams_of_the_data_and_no_other_bucket(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, ngram_orders=(2, 3), ngram_buckets=4099))
    data = _rows(24)
    ids = torch.tensor(data["input_ids"])
    seen = set(ngram_bucket_ids(ids, ids != PAD, (2, 3), 4099).flatten().tolist())
    unseen = sorted(set(range(4100)) - seen)
    CMOWTrainer(model=model, args=_args(tmp_path), train_dataset=data).train()
    table = model.cmow.encoder.ngram_embeddings.weight
    assert table[sorted(seen - {4099})].abs().sum(dim=1).gt(0).all()  # every n-gram of the data learnt something
    assert torch.equal(table[unseen], torch.zeros(len(unseen), table.shape[1]))  # still at their zero init
    assert torch.equal(table[4099], torch.zeros(table.shape[1]))  # the padding row


@pytest.mark.parametrize("sparse", [True, False])
def test_cmow_trainer_resumes_from_a_checkpoint_exactly(tmp_path, sparse):
    data = _rows(24)
    settings = dict(save_strategy="steps", save_steps=6, max_grad_norm=0.5)

    def run(folder, resume=None):
        torch.manual_seed(0)
        model = CMOWForSequenceClassification(tiny_config(num_labels=2))
        args = _args(tmp_path / folder, **settings)
        trainer = CMOWTrainer(model=model, args=args, train_dataset=data, sparse_embeddings=sparse)
        trainer.train(resume_from_checkpoint=resume)
        return model

    straight = run("straight")  # saves checkpoint-6 on the way
    resumed = run("resumed", resume=str(tmp_path / "straight" / "out" / "checkpoint-6"))
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
