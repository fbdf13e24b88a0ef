"""Pooled beam search against Hugging Face's generate, batch by batch, token for token."""
import pytest
import torch
from transformers import (MBartConfig, MBartForConditionalGeneration, MT5Config,
                          MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration)
from transformers.modeling_outputs import BaseModelOutput

import beam_search
import mt5_layout


class EosHead(torch.nn.Module):
    """The output layer with EOS scored by a pseudo-random function of the decoder state, so
    sentences end at varied steps; sin(1000 x) also turns any rounding difference between the
    two searches' decoder states into a different choice."""

    def __init__(self, head, eos=1):
        super().__init__()
        self.head, self.eos = head, eos
        self.register_buffer('direction', torch.randn(head.in_features))

    def forward(self, hidden):
        logits = self.head(hidden)
        wobble = torch.sin(1000 * (hidden * self.direction).sum(-1))
        logits[..., self.eos] = logits.max(-1).values + wobble - 0.5
        return logits


def tiny_mt5(kind='mt5', tie=False):
    """A random model; untied (mt5-base's layout) unless `tie`, its output layer then drawn apart
    from the decoder's input embedding."""
    torch.manual_seed(0)
    config_class, model_class = {'mt5': (MT5Config, MT5ForConditionalGeneration),
                                 't5': (T5Config, T5ForConditionalGeneration)}[kind]
    config = config_class(vocab_size=300, d_model=64, d_ff=128, num_heads=4, d_kv=16,
                          num_layers=2, num_decoder_layers=2, decoder_start_token_id=0,
                          eos_token_id=1, pad_token_id=0)
    mt5 = model_class(config).eval()
    if not tie:
        mt5_layout.set_tied(mt5, False)
        with torch.no_grad():
            mt5.lm_head.weight.normal_()
    assert mt5_layout.is_tied(mt5) == tie
    mt5.lm_head = EosHead(mt5.lm_head)
    return mt5


def encoded_batches(sizes=(3, 4, 1, 4, 2, 4), seed=1):
    """(key, states, mask) per batch; every batch padded, its first sentence the longest."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for key, size in enumerate(sizes):
        length = int(torch.randint(5, 20, (1,), generator=generator))
        states = torch.randn(size, length, 64, generator=generator)
        lengths = torch.randint(1, length + 1, (size,), generator=generator)
        lengths[0] = length
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
        batches.append((key, states, mask))
    return batches


def generate_each(mt5, batches, num_beams, max_new_tokens):
    with torch.no_grad():
        return {key: mt5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                  attention_mask=mask, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens)
                for key, states, mask in batches}


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_pooled_equals_generate(early_stopping, length_penalty, tie):
    mt5 = tiny_mt5(tie=tie)
    mt5.generation_config.early_stopping = early_stopping
    mt5.generation_config.length_penalty = length_penalty
    batches = encoded_batches()
    expected = generate_each(mt5, batches, num_beams=4, max_new_tokens=12)
    for pool_rows in (1, 8, 1000):
        with torch.no_grad():
            pooled = dict(beam_search.pooled_generate(mt5, batches, 4, 12, pool_rows))
        assert pooled.keys() == expected.keys()
        for key in expected:
            assert torch.equal(pooled[key], expected[key]), (key, pool_rows)


def test_pooled_equals_generate_for_t5_with_rescaled_decoder_outputs():
    t5 = tiny_mt5('t5')
    assert t5.config.scale_decoder_outputs
    batches = encoded_batches()
    expected = generate_each(t5, batches, num_beams=3, max_new_tokens=10)
    with torch.no_grad():
        pooled = dict(beam_search.pooled_generate(t5, batches, 3, 10, 16))
    assert all(torch.equal(pooled[key], expected[key]) for key in expected)


def test_sentences_end_at_different_steps():
    """The comparison above covers finished beams: outputs end with EOS at varied lengths."""
    mt5 = tiny_mt5()
    outputs = generate_each(mt5, encoded_batches(), num_beams=4, max_new_tokens=12)
    first_eos = [int((row == 1).nonzero()[0]) for ids in outputs.values() for row in ids
                 if (row == 1).any()]
    assert len(set(first_eos)) >= 3
    assert any(ids.shape[1] == 13 for ids in outputs.values())  # some hit max_new_tokens


def test_batches_leave_the_pool_as_they_end():
    mt5 = tiny_mt5()
    batches = encoded_batches(sizes=(2, 2, 2, 2))
    with torch.no_grad():
        order = [key for key, _ in beam_search.pooled_generate(mt5, batches, 3, 12, 1000)]
    assert sorted(order) == [0, 1, 2, 3]


def test_unsupported_settings_are_refused():
    mt5 = tiny_mt5()
    mt5.generation_config.no_repeat_ngram_size = 2
    assert beam_search.unsupported_settings(mt5.generation_config, 4) == \
        ["no_repeat_ngram_size=2"]
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        list(beam_search.pooled_generate(mt5, encoded_batches(), 4, 5))
    assert beam_search.unsupported_settings(tiny_mt5().generation_config, 1) == \
        ["num_beams=1 (greedy search)"]


def tiny_mbart(forced_bos=250):
    """A random mBART-50-shaped model: scaled embeddings, a random final_logits_bias, decoding
    from </s> (2) with a forced first token (the target language code) and a forced last </s>."""
    torch.manual_seed(0)
    config = MBartConfig(vocab_size=300, d_model=64, encoder_layers=1, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                         decoder_ffn_dim=128, max_position_embeddings=64, scale_embedding=True,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                         forced_eos_token_id=2)
    mbart = MBartForConditionalGeneration(config).eval()
    with torch.no_grad():
        mbart.final_logits_bias.normal_()
    mbart.generation_config.forced_bos_token_id = forced_bos
    mbart.lm_head = EosHead(mbart.lm_head, eos=2)
    return mbart


@pytest.mark.parametrize("max_new_tokens", [12, 30])
def test_pooled_equals_generate_for_mbart_with_forced_language_code(max_new_tokens):
    """mBART decodes pooled too (no fallback to generate): its bias, forced BOS and forced EOS
    give generate's ids; with 12 new tokens some sentences end on the forced </s>."""
    mbart = tiny_mbart()
    assert beam_search.unsupported_settings(mbart.generation_config, 4) == []
    batches = encoded_batches()
    expected = generate_each(mbart, batches, num_beams=4, max_new_tokens=max_new_tokens)
    assert all((ids[:, :2] == torch.tensor([2, 250])).all() for ids in expected.values())
    for pool_rows in (1, 1000):
        with torch.no_grad():
            pooled = dict(beam_search.pooled_generate(mbart, batches, 4, max_new_tokens,
                                                      pool_rows))
        assert all(torch.equal(pooled[key], expected[key]) for key in expected), pool_rows


def test_forced_bos_changes_the_output():
    """The comparison above would hold for an ignored forced BOS only if it changed nothing."""
    batches = encoded_batches(sizes=(2,))
    with torch.no_grad():
        forced = dict(beam_search.pooled_generate(tiny_mbart(), batches, 3, 6))[0]
        free = dict(beam_search.pooled_generate(tiny_mbart(None), batches, 3, 6))[0]
    assert (forced[:, 1] == 250).all() and not (free[:, 1] == 250).all()
