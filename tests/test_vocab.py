"""Vocabulary trimming on tiny random models built offline: outputs, UNK mapping, size, save/load, ONNX."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from edge_distill.targets.base import check_parity, get_target
from edge_distill.vocab import RemapIds, id_map, new_to_old, trim_vocabulary, used_tokens, vocab_saving

VOCAB, HIDDEN, SEQ = 200, 32, 12
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # BERT's special ids
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
DOMAIN = torch.arange(110, 150)  # the ids the "domain data" uses


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=32,
    )


def domain_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """[CLS] domain ids [SEP] then right padding; only kept ids."""
    generator = torch.Generator().manual_seed(seed)
    ids = DOMAIN[torch.randint(0, len(DOMAIN), (rows, SEQ), generator=generator)]  # (rows, seq)
    lengths = torch.randint(3, SEQ + 1, (rows,), generator=generator)
    lengths[0] = SEQ
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()  # (rows, seq)
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config()).eval()


@pytest.fixture(scope="module")
def keep() -> torch.Tensor:
    return used_tokens(domain_batch(64)["input_ids"], SPECIAL)


@pytest.fixture(scope="module")
def trimmed(model: BertForSequenceClassification, keep: torch.Tensor) -> BertForSequenceClassification:
    return trim_vocabulary(model, keep, unk_id=UNK).eval()


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_used_tokens_always_keeps_special_ids() -> None:
    keep = used_tokens([torch.tensor([[7, 7, 9]]), torch.tensor([[9, 11]])], SPECIAL)
    assert keep.tolist() == sorted({7, 9, 11, *SPECIAL}) and keep.dtype == torch.long
    assert used_tokens(torch.tensor([[7, 7, 9]]), SPECIAL, min_count=2).tolist() == sorted({7, *SPECIAL})

    tokenizer = SimpleNamespace(all_special_ids=[UNK, SEP, PAD, CLS, MASK])
    assert set(SPECIAL) <= set(used_tokens(torch.tensor([[120]]), tokenizer).tolist())
    with pytest.raises(ValueError, match="min_count"):
        used_tokens(torch.tensor([[1]]), SPECIAL, min_count=0)


def test_kept_ids_give_identical_logits(model, trimmed) -> None:
    batch = domain_batch(8, seed=3)
    with torch.no_grad():
        got = RemapIds(trimmed)(**batch)  # original ids in
    torch.testing.assert_close(got, logits(model, batch), atol=1e-6, rtol=0)


def test_unknown_id_maps_to_unk(model, trimmed, keep) -> None:
    batch = domain_batch(4, seed=5)
    unknown = 170
    assert unknown not in keep.tolist()
    batch["input_ids"][:, 1] = unknown
    expected = logits(
        model, {**batch, "input_ids": batch["input_ids"].masked_fill(batch["input_ids"] == unknown, UNK)}
    )
    with torch.no_grad():
        got = RemapIds(trimmed)(**batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert id_map(trimmed)[unknown] == id_map(trimmed)[UNK] == keep.tolist().index(UNK)


def test_params_shrink_by_the_dropped_rows(model, trimmed, keep) -> None:
    dropped = (VOCAB - len(keep)) * HIDDEN
    count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in trimmed.parameters()) == count - dropped
    assert trimmed.config.vocab_size == len(keep) and model.config.vocab_size == VOCAB  # original untouched
    saving = vocab_saving(model, keep)
    assert saving["params_saved"] == dropped and saving["params_after"] == count - dropped
    assert saving["mb_fp32_before"] == pytest.approx(count * 4 / 2**20)


def test_save_and_reload_keep_the_map_and_outputs(trimmed, tmp_path: Path) -> None:
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(id_map(reloaded), id_map(trimmed))
    assert torch.equal(new_to_old(reloaded), new_to_old(trimmed))
    batch = domain_batch(4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(RemapIds(reloaded)(**batch), RemapIds(trimmed)(**batch), atol=0, rtol=0)


def test_onnx_export_of_remapped_model_matches(model, trimmed, tmp_path: Path) -> None:
    target = get_target("onnx")
    if not target.available():
        pytest.skip("onnx is not installed here")
    wrapped = RemapIds(trimmed).eval()
    artifact = target.export(wrapped, domain_batch(2), tmp_path / "artifact")
    batch = domain_batch(10, seed=9)
    batch["input_ids"][1:, 2] = 170  # an id the trimmed vocabulary dropped -> UNK in the graph too
    assert check_parity(target, artifact, wrapped, batch, atol=1e-4).ok
    unk_batch = {**batch, "input_ids": batch["input_ids"].masked_fill(batch["input_ids"] == 170, UNK)}
    onnx_out = target.run(target.load(artifact), {k: v.numpy() for k, v in batch.items()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), logits(model, unk_batch), atol=1e-4, rtol=0)


def test_masked_lm_slices_the_tied_decoder_and_bias(keep) -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(bert_config()).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a non-zero bias, so slicing it is observable
    small = trim_vocabulary(model, keep, unk_id=UNK).eval()
    assert small.cls.predictions.decoder.weight is small.bert.embeddings.word_embeddings.weight
    assert small.cls.predictions.bias.shape == (len(keep),)
    batch = domain_batch(3)
    with torch.no_grad():
        got = RemapIds(small)(**batch)  # (batch, seq, kept)
    torch.testing.assert_close(got, logits(model, batch)[..., keep], atol=1e-5, rtol=0)
    assert vocab_saving(model, keep)["params_saved"] == (VOCAB - len(keep)) * (HIDDEN + 1)


def test_causal_lm_decodes_through_new_to_old() -> None:
    torch.manual_seed(0)
    eos = VOCAB - 1
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=1,
        n_head=2,
        n_positions=32,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config).eval()
    keep = used_tokens(DOMAIN[None, :], [eos, 0])
    small = trim_vocabulary(model, keep, unk_id=0).eval()
    ids = DOMAIN[None, :SEQ]
    wrapped = RemapIds(small)
    with torch.no_grad():
        got = wrapped(ids, torch.ones_like(ids))  # (1, seq, kept)
        full = model(input_ids=ids).logits  # (1, seq, vocab)
    torch.testing.assert_close(got, full[..., keep], atol=1e-5, rtol=0)
    assert small.config.eos_token_id == keep.tolist().index(eos)
    decoded = wrapped.new_to_old[got.argmax(-1)]  # (1, seq) ids of the original tokenizer
    assert torch.equal(decoded, keep[full[..., keep].argmax(-1)])
    assert set(decoded.flatten().tolist()) <= set(keep.tolist())


def test_bad_keep_sets_are_rejected(model) -> None:
    with pytest.raises(ValueError, match="UNK id 100"):
        trim_vocabulary(model, torch.tensor([0, 5]), unk_id=UNK)
    with pytest.raises(ValueError, match="repeated"):
        trim_vocabulary(model, torch.tensor([0, UNK, UNK]), unk_id=UNK)
    with pytest.raises(ValueError, match=r"ids in \[0, 200\)"):
        trim_vocabulary(model, torch.tensor([UNK, VOCAB]), unk_id=UNK)
    with pytest.raises(ValueError, match="no 'trimmed_vocab'"):
        RemapIds(model)
