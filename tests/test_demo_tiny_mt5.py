"""demo.tiny_mt5 builds a directory that the real loading code reads."""


def test_tiny_mt5_loads_from_its_directory_with_sane_initial_loss(tmp_path):
    import math

    import torch
    from transformers import MT5ForConditionalGeneration, T5Tokenizer

    from demo.tiny_mt5 import build_tiny_mt5
    sentences = ["the cat sees a dog", "we like red apples", "they read a long book"] * 20
    directory = build_tiny_mt5(str(tmp_path / "mt5"), sentences, vocab_size=80, d_model=64,
                               d_ff=128, num_layers=1, num_heads=2, d_kv=32)
    tokenizer = T5Tokenizer.from_pretrained(directory, legacy=False)
    model = MT5ForConditionalGeneration.from_pretrained(directory)
    assert model.config.vocab_size == len(tokenizer)
    encoded = tokenizer(sentences[:3], return_tensors="pt", padding=True)
    assert tokenizer.batch_decode(encoded["input_ids"], skip_special_tokens=True) == sentences[:3]
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    loss = model(**encoded, labels=labels).loss.item()
    assert loss < 2 * math.log(len(tokenizer))
