"""demo.tiny_mt5 builds a directory that the real loading code reads, in mt5-base's layout."""
import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from transformers import MT5ForConditionalGeneration, T5Tokenizer

import mt5_layout
from demo.tiny_mt5 import build_tiny_mt5

SENTENCES = ["the cat sees a dog", "we like red apples", "they read a long book"] * 20
SHAPE = dict(vocab_size=80, d_model=64, d_ff=128, num_layers=1, num_heads=2, d_kv=32)


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_mt5_loads_from_its_directory_with_sane_initial_loss(tmp_path, tie):
    directory = build_tiny_mt5(str(tmp_path / "mt5"), SENTENCES, tie=tie, **SHAPE)
    tokenizer = T5Tokenizer.from_pretrained(directory, legacy=False)
    model = MT5ForConditionalGeneration.from_pretrained(directory)
    assert model.config.vocab_size == len(tokenizer)
    encoded = tokenizer(SENTENCES[:3], return_tensors="pt", padding=True)
    assert tokenizer.batch_decode(encoded["input_ids"], skip_special_tokens=True) == SENTENCES[:3]
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    loss = model(**encoded, labels=labels).loss.item()
    assert loss < 2 * math.log(len(tokenizer))


def stored_embeddings(directory):
    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys() if key.endswith("embed_tokens.weight")
                or key in ("shared.weight", "lm_head.weight")}


def test_untied_by_default_like_mt5_base(tmp_path):
    """Both tensors stored with different values, config.json saying so, and from_pretrained
    giving an output layer of its own while the encoder and decoder share the embedding."""
    directory = build_tiny_mt5(str(tmp_path / "mt5"), SENTENCES, **SHAPE)
    stored = stored_embeddings(directory)
    assert set(stored) == {"shared.weight", "lm_head.weight"}
    assert not torch.equal(stored["shared.weight"], stored["lm_head.weight"])
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["tie_word_embeddings"] is False
    model = MT5ForConditionalGeneration.from_pretrained(directory)
    assert not mt5_layout.is_tied(model)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert model.decoder.embed_tokens.weight is model.shared.weight
    assert torch.equal(model.lm_head.weight, stored["lm_head.weight"])
    assert torch.equal(model.shared.weight, stored["shared.weight"])
    # Output layer at std d_model**-0.5, embedding at mT5's std 1.
    assert model.lm_head.weight.std().item() == pytest.approx(SHAPE["d_model"] ** -0.5, rel=0.1)
    assert model.shared.weight.std().item() == pytest.approx(1.0, rel=0.1)


def test_tied_on_request(tmp_path):
    directory = build_tiny_mt5(str(tmp_path / "mt5"), SENTENCES, tie=True, **SHAPE)
    assert set(stored_embeddings(directory)) == {"shared.weight"}
    assert mt5_layout.is_tied(MT5ForConditionalGeneration.from_pretrained(directory))
