"""Semantics of the contrastive objectives on small inputs with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contriever_repro.errors import InputError
from contriever_repro.models.spec import pool
from contriever_repro.training.contrastive import (
    Encoder,
    InBatch,
    MoCo,
    check_queue,
    export_query_encoder,
    info_nce,
)
from contriever_repro.training.optim import build_optimizer
from tiny_models import tiny_bert

WORLD = 2


class ToyHF(nn.Module):
    """HF-shaped pure-torch encoder for the 2-process tests: spawned workers skip the
    transformers import, which alone takes several seconds on 2 cores."""

    def __init__(self, seed: int = 0, dim: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(hidden_size=dim)
        self.embed = nn.Embedding(100, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        context = (h * attention_mask[..., None]).sum(1, keepdim=True)  # couple the tokens
        return SimpleNamespace(last_hidden_state=self.norm(torch.tanh(self.mix(h + context))))


def make_batch(n: int, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with [CLS]=1 first and right padding of varied length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, length), generator=g)
    ids[:, 0] = 1
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


class Lookup(nn.Module):
    """Encoder stand-in: the embedding is a table row chosen by the first token id."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone().float())
        self.dim = table.shape[1]

    def forward(self, input_ids, attention_mask, normalize=False):
        emb = self.table[input_ids[:, 0]]
        return F.normalize(emb, dim=-1) if normalize else emb


def ids(*rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(rows).unsqueeze(1)
    return x, torch.ones_like(x)


# ---------------------------------------------------------------------------- InfoNCE


def test_moco_loss_matches_hand_computed_infonce():
    # rows 0,1: queries; rows 2,3: their positive keys; queue columns (0,1) and (-1,0)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    moco = MoCo(Lookup(table), queue_size=2, momentum=1.0, temperature=0.5)
    moco.queue.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    loss, stats = moco(*ids(0, 1), *ids(2, 3))
    # logits/τ: q1 → [1, 0, -1]/0.5; q2 → [0.5, 1, 0]/0.5
    loss1 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    loss2 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + 1))
    assert loss.item() == pytest.approx((loss1 + loss2) / 2, rel=1e-6)
    assert stats["accuracy"].item() == 0.5  # q2 prefers the queue entry (0, 1)
    logits = torch.tensor([[2.0, 0.0, -2.0], [1.0, 2.0, 0.0]])
    manual = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    assert info_nce(logits, torch.zeros(2, dtype=torch.long)).item() == pytest.approx(
        manual.item(), rel=1e-6
    )


def test_label_smoothing_is_passed_to_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -2.0]])
    target = torch.zeros(1, dtype=torch.long)
    logp = torch.log_softmax(logits, dim=1)[0]
    expected = -(0.9 * logp[0] + 0.1 * logp.mean())
    assert info_nce(logits, target, label_smoothing=0.1).item() == pytest.approx(expected.item())


def test_moco_stats_report_batch_std():
    table = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    moco = MoCo(Lookup(table), queue_size=2, momentum=1.0, temperature=1.0)
    _, stats = moco(*ids(0, 1), *ids(2, 3))
    # dim 0 of q: (1, 3) → std √2; dim 1: (0, 0) → 0; mean √2/2
    assert stats["stdq"].item() == pytest.approx(math.sqrt(2) / 2)
    assert stats["stdk"].item() == pytest.approx(math.sqrt(2) / 2)
    assert set(stats) == {"loss", "accuracy", "stdq", "stdk"}


# ---------------------------------------------------------------------------- queue


def test_queue_is_unit_norm_gaussian_at_start_and_in_state_dict():
    moco = MoCo(Encoder(tiny_bert()), queue_size=8)
    assert moco.queue.shape == (16, 8)
    torch.testing.assert_close(moco.queue.norm(dim=0), torch.ones(8))
    assert int(moco.queue_ptr) == 0
    state = moco.state_dict()
    assert {"queue", "queue_ptr"} <= set(state)
    assert any(k.startswith("encoder_q.model.") for k in state)
    assert any(k.startswith("encoder_k.model.") for k in state)
    other = MoCo(Encoder(tiny_bert(seed=1)), queue_size=8)
    moco.queue_ptr.fill_(4)
    other.load_state_dict(moco.state_dict(), strict=True)
    torch.testing.assert_close(other.queue, moco.queue)
    assert int(other.queue_ptr) == 4


def test_enqueue_and_pointer_wrap():
    table = torch.arange(1.0, 17.0).reshape(8, 2)  # rows with norm ≠ 1
    moco = MoCo(Lookup(table), queue_size=8, momentum=1.0, temperature=1.0)
    initial = moco.queue.clone()
    moco(*ids(0, 1, 2, 3), *ids(4, 5, 6, 7))
    assert int(moco.queue_ptr) == 4
    torch.testing.assert_close(moco.queue[:, :4], table[4:8].T)  # keys, unnormalised
    torch.testing.assert_close(moco.queue[:, 4:], initial[:, 4:])
    moco(*ids(4, 5, 6, 7), *ids(0, 1, 2, 3))
    assert int(moco.queue_ptr) == 0
    torch.testing.assert_close(moco.queue[:, :4], table[4:8].T)
    torch.testing.assert_close(moco.queue[:, 4:], table[0:4].T)
    moco(*ids(0, 1, 2, 3), *ids(2, 3, 0, 1))  # wraps: overwrites the oldest block
    assert int(moco.queue_ptr) == 4
    torch.testing.assert_close(moco.queue[:, :4], table[[2, 3, 0, 1]].T)


def test_norm_doc_enqueues_unit_keys():
    table = torch.arange(1.0, 9.0).reshape(4, 2)
    moco = MoCo(Lookup(table), queue_size=2, momentum=1.0, norm_doc=True)
    moco(*ids(0, 1), *ids(2, 3))
    torch.testing.assert_close(moco.queue, F.normalize(table[2:4], dim=-1).T)


def test_queue_size_must_be_a_multiple_of_global_batch():
    with pytest.raises(InputError, match=r"queue size 6 .* global batch size 4"):
        check_queue(6, 4)
    check_queue(8, 4)
    with pytest.raises(InputError, match="6.*4"):
        MoCo(Lookup(torch.eye(4)), queue_size=6, global_batch=4)
    moco = MoCo(Lookup(torch.eye(4)), queue_size=6, momentum=1.0)
    queue = moco.queue.clone()
    with pytest.raises(InputError, match="6.*4"):
        moco(*ids(0, 1, 2, 3), *ids(0, 1, 2, 3))
    torch.testing.assert_close(moco.queue, queue)  # refused before anything changed
    assert int(moco.queue_ptr) == 0


# ---------------------------------------------------------------------------- momentum


def test_momentum_update_before_keys_and_no_key_gradient():
    m = 0.9
    moco = MoCo(Encoder(tiny_bert()), queue_size=8, momentum=m, temperature=0.05)
    with torch.no_grad():  # make θ_q ≠ θ_k so the update is visible
        for p in moco.encoder_q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    k_old = [p.detach().clone() for p in moco.encoder_k.parameters()]
    q_before = [p.detach().clone() for p in moco.encoder_q.parameters()]
    key_ids, key_mask = make_batch(4, seed=2)
    with torch.no_grad():
        keys_old_encoder = moco.encoder_k(key_ids, key_mask)

    opt = build_optimizer(moco, lr=1e-2)
    loss, _ = moco(*make_batch(4, seed=1), key_ids, key_mask)
    loss.backward()
    opt.step()

    for pk, old, pq in zip(moco.encoder_k.parameters(), k_old, q_before, strict=True):
        torch.testing.assert_close(pk, m * old + (1 - m) * pq, rtol=1e-6, atol=1e-7)
        assert pk.grad is None and not pk.requires_grad
    assert all(p.grad is not None for p in moco.encoder_q.parameters())
    assert not any(
        torch.equal(a, b) for a, b in zip(moco.encoder_q.parameters(), q_before, strict=True)
    )
    with torch.no_grad():
        keys_new_encoder = moco.encoder_k(key_ids, key_mask)
    torch.testing.assert_close(moco.queue[:, :4], keys_new_encoder.T)
    assert not torch.allclose(keys_new_encoder, keys_old_encoder, atol=1e-4)


def test_update_false_leaves_key_encoder_and_queue():
    moco = MoCo(Encoder(tiny_bert()), queue_size=8, momentum=0.5)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(0.1)
    state = {k: v.clone() for k, v in moco.state_dict().items()}
    moco(*make_batch(4), *make_batch(4, seed=1), update=False)
    for k, v in moco.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_key_encoder_eval_mode_really_disables_dropout():
    def two_key_blocks(train_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        moco = MoCo(
            Encoder(tiny_bert(dropout=0.3)),
            queue_size=8,
            momentum=1.0,
            key_encoder_train_mode=train_mode,
        )
        moco.train()
        assert moco.encoder_q.training
        assert all(mod.training == train_mode for mod in moco.encoder_k.modules())
        batch = make_batch(4)
        moco(*batch, *batch)
        moco.encoder_k.train()  # a stray toggle is undone at the next step
        moco(*batch, *batch)
        return moco.queue[:, :4], moco.queue[:, 4:]

    first, second = two_key_blocks(train_mode=False)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    first, second = two_key_blocks(train_mode=True)  # code-faithful: dropout on keys
    assert not torch.allclose(first, second)

    moco = MoCo(Encoder(tiny_bert(dropout=0.3)), queue_size=8, key_encoder_train_mode=False)
    moco.eval()
    moco.train()
    assert moco.encoder_q.training and not moco.encoder_k.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_key_weights_give_autocasts_keys_exactly(dtype):
    """Under autocast the key encoder runs on half copies of its Linear weights: the
    keys (the queue), the loss and the fp32 key encoder are bitwise those of autocast
    over the fp32 weights, step after step, and nothing new is checkpointed."""

    def run(half: bool):
        moco = MoCo(Encoder(tiny_bert()), queue_size=8, momentum=0.9, key_half_weights=half)
        with torch.no_grad():
            for p in moco.encoder_q.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        opt = build_optimizer(moco, lr=1e-2)
        losses = []
        for step in range(3):
            with torch.autocast("cpu", dtype=dtype):
                loss, _ = moco(*make_batch(4, seed=step), *make_batch(4, seed=10 + step))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        return moco, torch.stack(losses)

    plain, plain_losses = run(half=False)
    half, half_losses = run(half=True)
    assert torch.equal(half_losses, plain_losses)
    assert half.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(half.state_dict()[key], value), key
    copies = half.key_half_weights
    assert len(copies.names) == 2 * 6  # weight and bias of one layer's 6 Linears
    assert all(c.dtype == dtype for c in copies.copies)
    for name, c in zip(copies.names, copies.copies, strict=True):  # the last step's θ_k
        assert c.data_ptr() != half.encoder_k.get_parameter(name).data_ptr()
    with torch.no_grad():  # without autocast: the fp32 encoder, no copies involved
        keys = half.encode_keys(*make_batch(4))
    assert keys.dtype == torch.float32


def test_half_key_weights_are_the_ones_the_key_forward_uses(monkeypatch):
    moco = MoCo(Encoder(tiny_bert()), queue_size=8)
    copies, batch = moco.key_half_weights, make_batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        want = moco.encoder_k(*batch)
        assert torch.equal(moco.encode_keys(*batch), want)
        real = type(copies).refreshed
        zeroed = lambda dtype: {n: torch.zeros_like(c) for n, c in real(copies, dtype).items()}  # noqa: E731
        monkeypatch.setattr(copies, "refreshed", zeroed)
        assert not torch.allclose(moco.encode_keys(*batch), want)


def test_half_key_weights_follow_a_replaced_or_moved_encoder():
    moco = MoCo(Encoder(tiny_bert()), queue_size=8)
    copies = moco.key_half_weights
    copies.refreshed(torch.bfloat16)
    name = copies.names[0]
    with torch.no_grad():  # a conversion that installs new parameter objects
        new = nn.Parameter(torch.ones_like(moco.encoder_k.get_parameter(name)), False)
    module, _, leaf = name.rpartition(".")
    setattr(moco.encoder_k.get_submodule(module), leaf, new)
    assert torch.equal(copies.refreshed(torch.bfloat16)[name], new.to(torch.bfloat16))
    assert copies.refreshed(torch.float16)[name].dtype == torch.float16
    assert MoCo(Encoder(tiny_bert()), queue_size=8, key_half_weights=False).key_half_weights is None


# ---------------------------------------------------------------------------- in-batch


def test_inbatch_with_negatives_matches_manual_loss_and_targets():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0, -1]])
    model = InBatch(Lookup(table), temperature=0.5)
    # queries 0, 1; keys = [golds 2, 3; negatives 4, 5]
    loss, stats = model(*ids(0, 1), *ids(2, 3, 4, 5))
    logits = table[:2] @ table[2:].T / 0.5
    expected = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["accuracy"].item() == 1.0
    with pytest.raises(InputError, match="2 queries but only 1 keys"):
        model(*ids(0, 1), *ids(2))


def test_inbatch_gradient_flows_through_both_sides():
    model = InBatch(Encoder(tiny_bert()), temperature=0.05)
    q, k = make_batch(3), make_batch(3, seed=1)
    loss, _ = model(*q, *k)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the key side alone also receives gradient
    model.zero_grad()
    qe = model.encoder(*q).detach()
    ke = model.encoder(*k)
    F.cross_entropy(qe @ ke.T / 0.05, torch.arange(3)).backward()
    assert model.encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- distributed


def _dist_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        b, n_neg = 3, 2
        q_ids, q_mask = make_batch(WORLD * b, seed=10)
        k_ids, k_mask = make_batch(WORLD * b, seed=11)
        n_ids, n_mask = make_batch(WORLD * b * n_neg, seed=12)
        mine = slice(rank * b, (rank + 1) * b)
        mine_neg = slice(rank * b * n_neg, (rank + 1) * b * n_neg)
        out: dict[str, object] = {}

        for tag, with_neg in (("plain", False), ("neg", True)):
            model = InBatch(Encoder(ToyHF()), temperature=0.05)
            keys = (k_ids[mine], k_mask[mine])
            if with_neg:
                keys = (
                    torch.cat([k_ids[mine], n_ids[mine_neg]]),
                    torch.cat([k_mask[mine], n_mask[mine_neg]]),
                )
            loss, stats = model(q_ids[mine], q_mask[mine], *keys)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            grads = {}
            for name, p in model.named_parameters():  # DDP-style: mean over ranks
                g = p.grad.clone()
                dist.all_reduce(g)
                grads[name] = g / WORLD
            out[tag] = {"loss": mean_loss / WORLD, "grads": grads, "acc": stats["accuracy"]}

        moco = MoCo(Encoder(ToyHF()), queue_size=8, momentum=0.99)
        initial = moco.queue.clone()
        mk_ids, mk_mask = make_batch(WORLD * 2, seed=13)
        local = slice(rank * 2, (rank + 1) * 2)
        moco(*make_batch(2, seed=14 + rank), mk_ids[local], mk_mask[local])
        with torch.no_grad():
            local_keys = moco.encoder_k(mk_ids[local], mk_mask[local])
        out["moco"] = {
            "queue": moco.queue.clone(),
            "ptr": int(moco.queue_ptr),
            "keys": local_keys,
            "initial": initial,
        }
        try:
            MoCo(Encoder(ToyHF()), queue_size=6)(*make_batch(2), *make_batch(2))
            out["check"] = "no error"
        except InputError as err:
            out["check"] = str(err)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_dist_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_gathered_inbatch_equals_single_process(two_ranks):
    q_ids, q_mask = make_batch(WORLD * 3, seed=10)
    k_ids, k_mask = make_batch(WORLD * 3, seed=11)
    model = InBatch(Encoder(ToyHF()), temperature=0.05)
    loss, _ = model(q_ids, q_mask, k_ids, k_mask)
    loss.backward()
    for res in two_ranks:
        got = res["plain"]
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-5, atol=1e-5)


def test_gathered_negatives_keep_targets_on_golds(two_ranks):
    """Layout [r0 golds, r0 negatives, r1 golds, r1 negatives]; query i of rank r → r·(B+N)+i."""
    b, n_neg = 3, 2
    q_ids, q_mask = make_batch(WORLD * b, seed=10)
    k_ids, k_mask = make_batch(WORLD * b, seed=11)
    n_ids, n_mask = make_batch(WORLD * b * n_neg, seed=12)
    enc = Encoder(ToyHF())
    blocks_ids, blocks_mask = [], []
    for r in range(WORLD):
        blocks_ids += [k_ids[r * b : (r + 1) * b], n_ids[r * b * n_neg : (r + 1) * b * n_neg]]
        blocks_mask += [k_mask[r * b : (r + 1) * b], n_mask[r * b * n_neg : (r + 1) * b * n_neg]]
    keys = enc(torch.cat(blocks_ids), torch.cat(blocks_mask))
    q = enc(q_ids, q_mask)
    targets = torch.cat([r * b * (1 + n_neg) + torch.arange(b) for r in range(WORLD)])
    loss = F.cross_entropy(q / 0.05 @ keys.T, targets)
    loss.backward()
    for res in two_ranks:
        got = res["neg"]
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
        for name, p in enc.named_parameters():
            torch.testing.assert_close(
                got["grads"][f"encoder.{name}"], p.grad, rtol=1e-5, atol=1e-5
            )


def test_moco_enqueues_keys_of_all_ranks_in_rank_order(two_ranks):
    expected = torch.cat([res["moco"]["keys"] for res in two_ranks]).T
    for res in two_ranks:
        got = res["moco"]
        assert got["ptr"] == 4
        torch.testing.assert_close(got["queue"][:, :4], expected)
        torch.testing.assert_close(got["queue"][:, 4:], got["initial"][:, 4:])
    assert (
        "queue size 6" in two_ranks[0]["check"] and "global batch size 4" in two_ranks[0]["check"]
    )


# ---------------------------------------------------------------------------- export


def _pooled(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return pool(
            model(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state, batch[1], "mean"
        )


@pytest.mark.parametrize("wrapper", ["moco", "inbatch", "encoder", "ddp_state"])
def test_export_loads_strictly_into_plain_bert(wrapper):
    enc = Encoder(tiny_bert(seed=3, pooler=True))  # the pooler is dropped by Encoder
    module = {
        "moco": lambda: MoCo(enc, queue_size=8),
        "inbatch": lambda: InBatch(enc),
        "encoder": lambda: enc,
        "ddp_state": lambda: MoCo(enc, queue_size=8),
    }[wrapper]()
    if wrapper == "ddp_state":
        state = {f"module.{k}": v for k, v in module.state_dict().items()}
        exported = export_query_encoder(state, reference=enc.model.config)
    else:
        exported = export_query_encoder(module)
    from transformers import BertModel

    plain = BertModel(enc.model.config, add_pooling_layer=False)
    plain.load_state_dict(exported, strict=True)
    plain.eval()
    enc.eval()
    batch = make_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(_pooled(plain, batch), enc(*batch))


def test_export_rejects_wrong_missing_or_stray_keys():
    from transformers import BertConfig

    moco = MoCo(Encoder(tiny_bert()), queue_size=8)
    cfg = moco.encoder_q.model.config
    state = moco.state_dict()
    renamed = dict(state)
    renamed["encoder_q.model.embeddings.wrong.weight"] = renamed.pop(
        "encoder_q.model.embeddings.word_embeddings.weight"
    )
    with pytest.raises(InputError) as err:
        export_query_encoder(renamed, reference=cfg)
    assert "missing keys: embeddings.word_embeddings.weight" in str(err.value)
    assert "unexpected keys: embeddings.wrong.weight" in str(err.value)

    with pytest.raises(InputError, match="foo"):
        export_query_encoder({**state, "foo": torch.zeros(1)}, reference=cfg)
    bigger = BertConfig(**{**cfg.to_dict(), "hidden_size": 32, "intermediate_size": 64})
    with pytest.raises(InputError, match="shape mismatches"):
        export_query_encoder(state, reference=bigger)
    with pytest.raises(InputError, match="reference"):
        export_query_encoder(state)
    # an InBatch checkpoint: only the leading "encoder.model." goes, the inner
    # "encoder.layer" stays (the reference's substring replace broke exactly this)
    inbatch = InBatch(Encoder(tiny_bert())).state_dict()
    exported = export_query_encoder(inbatch, reference=cfg)
    assert "encoder.layer.0.attention.self.query.weight" in exported


def test_export_real_minilm(minilm_path):
    from transformers import AutoModel, BertModel

    enc = Encoder(AutoModel.from_pretrained(minilm_path))
    moco = MoCo(enc, queue_size=8)
    exported = export_query_encoder(moco)
    plain = BertModel(enc.model.config, add_pooling_layer=False)
    plain.load_state_dict(exported, strict=True)
    plain.eval()
    enc.eval()
    batch = make_batch(2, length=9)
    torch.testing.assert_close(_pooled(plain, batch), enc(*batch).detach())
