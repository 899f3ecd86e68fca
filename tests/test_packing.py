"""Packed (unpadded) encoder forward: the same embeddings and gradients as the padded
forward, on hand-made batches, a real pre-trained encoder and real text."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from contriever_repro.errors import InputError
from contriever_repro.models.packing import (
    PACKED_ATTENTION,
    check_packable,
    forward_packed,
    pack,
    packed_sdpa_attention,
    unpack,
)
from contriever_repro.training.augment import pad_batch
from contriever_repro.training.contrastive import Encoder, InBatch, MoCo
from tiny_models import tiny_bert

SEQS = [[2, 7, 9, 3], [2, 5, 3], [2, 11, 12, 13, 14, 15, 3], [2, 3]]


def test_pack_keeps_each_token_at_its_column():
    ids, mask = pad_batch(SEQS, side="left")  # width 7
    flat, positions, packing = pack(ids, mask)
    assert flat.tolist() == [sum(SEQS, [])]
    # left padding: row 0's 4 tokens sit in columns 3-6 of the padded batch
    assert positions.tolist() == [[3, 4, 5, 6, 4, 5, 6] + list(range(7)) + [5, 6]]
    assert (packing.rows, packing.width) == (4, 7)
    assert torch.equal(packing.key_mask[:, 0, 0], mask.bool())
    assert packing.index.tolist() == [3, 4, 5, 6, 11, 12, 13, *range(14, 21), 26, 27]
    # and back: the padded batch, zeros at padding
    assert torch.equal(unpack(flat[0], packing), ids)


@pytest.mark.parametrize(
    ("side", "pooling"),
    # CLS pooling reads column 0, a real token only where padding is on the right, as
    # training pads (left-padded, the padded forward's pad state there is no embedding).
    [("right", "mean"), ("left", "mean"), ("right", "cls")],
)
def test_packed_encoder_gives_the_padded_embeddings_and_gradients(side, pooling):
    padded, packed = tiny_bert(layers=2), tiny_bert(layers=2)
    ids, mask = pad_batch(SEQS, side=side, multiple=4)  # width 8: one all-padding column
    target = torch.randn(len(SEQS), 16)
    grads = {}
    for name, model, unpadded in (("padded", padded, False), ("packed", packed, True)):
        emb = Encoder(model, pooling=pooling, unpadded=unpadded)(ids, mask)
        (emb * target).sum().backward()
        grads[name] = (emb.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["packed"][0], grads["padded"][0], atol=1e-6, rtol=1e-5)
    for name, grad in grads["padded"][1].items():
        if grad is None:  # position rows never used stay without gradient in both
            assert grads["packed"][1][name] is None
            continue
        torch.testing.assert_close(grads["packed"][1][name], grad, atol=1e-6, rtol=1e-5)
    assert padded.config._attn_implementation == "sdpa"
    assert packed.config._attn_implementation == "sdpa"  # switched for the call only


def test_packed_run_computes_on_real_tokens_only():
    """The model's layers see one row of T tokens, not rows x width."""
    model, seen = tiny_bert(layers=2), []
    model.encoder.layer[0].intermediate.register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape[:-1]))
    )
    ids, mask = pad_batch(SEQS, multiple=8)
    hidden = forward_packed(model, ids, mask)
    assert seen == [(1, 16)] and hidden.shape == (4, 8, 16)
    assert not hidden[~mask.bool()].any()  # zeros at padding
    Encoder(model)(ids, mask)
    assert seen[-1] == (4, 8)


def test_objectives_with_packed_encoders_give_the_padded_loss():
    q_ids, q_mask = pad_batch(SEQS, multiple=8)
    k_ids, k_mask = pad_batch([s[::-1] for s in SEQS], multiple=8)
    for make in (
        lambda enc: InBatch(enc, temperature=0.1),
        lambda enc: MoCo(enc, queue_size=8, momentum=0.9, temperature=0.1),
    ):
        losses = []
        for unpadded in (False, True):
            torch.manual_seed(1)  # MoCo's random queue
            objective = make(Encoder(tiny_bert(layers=2), unpadded=unpadded))
            loss, _ = objective(q_ids, q_mask, k_ids, k_mask)
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_unpackable_models_are_refused_naming_the_key():
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(
        RobertaConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=20,
        )
    )  # fmt: skip
    with pytest.raises(InputError, match=r"pretraining\.x\.unpadded: .*'roberta'"):
        check_packable(roberta, "pretraining.x.unpadded")
    eager = tiny_bert(layers=2)
    eager.config._attn_implementation = "eager"
    with pytest.raises(InputError, match="loaded with 'eager'"):
        check_packable(eager, "finetuning.y.unpadded")
    checkpointed = tiny_bert(layers=2)
    enable = getattr(checkpointed, "activation_checkpointing_enable", None)
    (enable or checkpointed.gradient_checkpointing_enable)()  # recomputes unpacked
    with pytest.raises(InputError, match=r"finetuning\.y\.unpadded: .*gradient checkpointing"):
        check_packable(checkpointed, "finetuning.y.unpadded")
    check_packable(tiny_bert(layers=2), "ok")


def test_a_model_whose_attention_ignores_the_packing_is_refused(monkeypatch):
    """As under a transformers whose BERT does not look its attention function up in
    the interface: the packed row would attend across its sequences. The probe that
    check_packable runs sees it, and the model is left as it was."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from contriever_repro.models import packing

    def unmasked(module, query, key, value, attention_mask, packing=None, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    monkeypatch.setattr(packing, "packed_sdpa_attention", unmasked)
    model = tiny_bert(layers=2).train()
    with pytest.raises(InputError, match=r"pretraining\.x\.unpadded: .*packed forward is not"):
        check_packable(model, "pretraining.x.unpadded")
    assert model.training and model.config._attn_implementation == "sdpa"


def test_the_packed_attention_refuses_calls_without_a_packing():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match=PACKED_ATTENTION):
        packed_sdpa_attention(torch.nn.Module(), q, q, q, None)


def test_the_attention_switch_is_undone_when_the_forward_fails():
    model = tiny_bert(layers=2)
    ids = torch.tensor([[2, 100, 3]])  # 100 is outside the 100-word vocabulary
    with pytest.raises(IndexError):
        forward_packed(model, ids, torch.ones_like(ids))
    assert model.config._attn_implementation == "sdpa"


def test_packed_minilm_embeds_scifact_as_the_padded_one(minilm_path, shared_data):
    """The real pre-trained encoder on 32 real SciFact queries and 32 documents in one
    batch (at most 256 tokens, so mostly padding): every packed embedding is within
    float rounding of the padded one."""
    texts = []
    for name in ("queries", "corpus"):
        path = shared_data / "beir" / "scifact" / f"{name}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()[:32]
        texts += [json.loads(line)["text"] for line in lines]
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    batch = tok(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    model = AutoModel.from_pretrained(str(minilm_path), attn_implementation="sdpa").eval()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask.float().mean() < 0.7  # the batch is mostly padding
    with torch.no_grad():
        padded = Encoder(model)(ids, mask)
        packed = Encoder(model, unpadded=True)(ids, mask)
    cosine = torch.nn.functional.cosine_similarity(packed, padded, dim=-1)
    assert cosine.min() > 1 - 1e-6
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
