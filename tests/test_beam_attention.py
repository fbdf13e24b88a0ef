"""Cross-attention keys shared by a sentence's beams: the same attention, one cache copy."""
import pytest
import torch
import torch.nn.functional as F
from transformers import MT5Config, MT5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

import beam_attention
import beam_search


def test_folded_beams_attend_as_repeated_keys_do():
    torch.manual_seed(0)
    sentences, beams, heads, frames, dim = 4, 4, 12, 188, 64
    key, value = torch.randn(2, sentences, heads, frames, dim)
    query = torch.randn(sentences * beams, heads, 1, dim)
    mask = torch.ones(sentences, 1, 1, frames, dtype=torch.bool)
    mask[1, ..., 100:] = False
    bias = torch.randn(1, heads, 1, frames)
    module = torch.nn.Module()
    module.is_causal = False
    with torch.no_grad():
        out, _ = beam_attention.folded_sdpa_attention(module, query, key, value, mask,
                                                      scaling=1.0, position_bias=bias)
        repeat = lambda t: t.repeat_interleave(beams, 0)  # noqa: E731
        expected = F.scaled_dot_product_attention(
            query, repeat(key), repeat(value), scale=1.0,
            attn_mask=torch.where(repeat(mask), bias, torch.finfo(torch.float32).min))
    assert out.shape == (sentences * beams, 1, heads, dim)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_per_row_masks_fold_to_one_per_sentence_and_others_pass():
    mask = torch.arange(6).repeat_interleave(3).view(18, 1, 1, 1)
    assert torch.equal(beam_attention.fold_beams(mask, 18, 3).flatten(), torch.arange(6))
    shared = torch.zeros(1, 2, 1, 5)
    assert beam_attention.fold_beams(shared, 18, 3) is shared
    assert beam_attention.fold_beams(None, 18, 3) is None


def tiny_model(attention='sdpa'):
    torch.manual_seed(0)
    config = MT5Config(vocab_size=200, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_layers=2,
                       num_decoder_layers=2, decoder_start_token_id=0, eos_token_id=1,
                       pad_token_id=0, tie_word_embeddings=False, attn_implementation=attention)
    return MT5ForConditionalGeneration(config).eval()


def batch_state(model, sentences=3, frames=9, share_keys=True):
    torch.manual_seed(1)
    states = torch.randn(sentences, frames, 32)
    mask = torch.ones(sentences, frames, dtype=torch.long)
    mask[0, 5:] = 0
    settings = beam_search.SearchSettings(model.generation_config, 4, 6, states.device)
    return beam_search.BatchBeams(0, states, mask, settings, share_keys)


def test_the_cache_holds_one_cross_attention_row_per_sentence():
    model = tiny_model()
    assert beam_attention.shares_keys(model.get_decoder())
    batch = batch_state(model)
    with torch.no_grad():
        for _ in range(2):
            beam_search.step(model, [batch])
    cache = batch.cache
    active = len(batch.active)
    assert cache.cross_attention_cache.layers[0].keys.shape[0] == active
    assert cache.self_attention_cache.layers[0].keys.shape[0] == active * 4
    # the decoder's own attention setting is back once the step is over
    assert model.get_decoder().config._attn_implementation == 'sdpa'


def test_shared_and_repeated_keys_decode_alike():
    model = tiny_model()
    results = []
    for share in (True, False):
        batch = batch_state(model, share_keys=share)
        with torch.no_grad():
            while not batch.done:
                beam_search.step(model, [batch])
        results.append(batch.result())
    assert torch.equal(*results)


def test_eager_attention_keeps_a_copy_per_beam_and_equals_generate():
    model = tiny_model('eager')
    assert not beam_attention.shares_keys(model.get_decoder())
    torch.manual_seed(2)
    states, mask = torch.randn(2, 7, 32), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        (_, ids), = beam_search.pooled_generate(model, [(0, states, mask)], 3, 5)
        expected = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                  attention_mask=mask, num_beams=3, max_new_tokens=5)
    assert torch.equal(ids, expected)


def test_the_setting_is_restored_after_an_error():
    model = tiny_model()
    decoder = model.get_decoder()
    with pytest.raises(RuntimeError):
        with beam_attention.shared_keys(decoder):
            assert decoder.config._attn_implementation == beam_attention.FOLDED_SDPA
            raise RuntimeError("step failed")
    assert decoder.config._attn_implementation == 'sdpa'
