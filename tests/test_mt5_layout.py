"""mt5_layout: the output layer tied or apart, decided as from_pretrained decides."""
import torch
from transformers import MT5Config, MT5ForConditionalGeneration

import mt5_layout


def small_mt5():
    torch.manual_seed(0)
    return MT5ForConditionalGeneration(MT5Config(vocab_size=40, d_model=16, d_ff=32, d_kv=8,
                                                 num_layers=1, num_heads=2))


def test_built_from_a_config_mt5_is_tied_and_can_be_untied_and_tied_again():
    mt5 = small_mt5()
    assert mt5_layout.is_tied(mt5) and mt5.config.tie_word_embeddings
    mt5_layout.set_tied(mt5, False)
    assert not mt5_layout.is_tied(mt5) and mt5.config.tie_word_embeddings is False
    assert torch.equal(mt5.lm_head.weight, mt5.shared.weight)  # a copy: load weights after
    assert mt5.encoder.embed_tokens.weight is mt5.shared.weight is mt5.decoder.embed_tokens.weight
    assert len(list(mt5.parameters())) == len(list(small_mt5().parameters())) + 1
    mt5.tie_weights()  # as transformers calls it: the config keeps it untied
    assert not mt5_layout.is_tied(mt5)
    mt5_layout.set_tied(mt5, True)
    assert mt5_layout.is_tied(mt5) and mt5.config.tie_word_embeddings


def test_state_is_tied_unless_both_tensors_differ():
    shared = torch.randn(5, 3)
    assert mt5_layout.state_is_tied({'mt5_model.shared.weight': shared})
    assert mt5_layout.state_is_tied({'mt5_model.shared.weight': shared,
                                     'mt5_model.lm_head.weight': shared.clone()})
    assert not mt5_layout.state_is_tied({'mt5_model.shared.weight': shared,
                                         'mt5_model.lm_head.weight': shared + 1})
    assert not mt5_layout.state_is_tied({'shared.weight': shared, 'lm_head.weight': -shared},
                                        prefix='')


def test_match_state_leaves_models_without_mt5_alone():
    module = torch.nn.Linear(2, 2)
    mt5_layout.match_state(module, {'mt5_model.shared.weight': torch.zeros(1)})
    holder = torch.nn.Module()
    holder.mt5_model = small_mt5()
    mt5_layout.match_state(holder, {'mt5_model.shared.weight': torch.zeros(40, 16),
                                    'mt5_model.lm_head.weight': torch.ones(40, 16)})
    assert not mt5_layout.is_tied(holder.mt5_model)
