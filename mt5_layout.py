"""mT5's output layer: tied to the input embedding, or a tensor of its own.

google/mt5-base stores its output layer (`lm_head`) apart from the input embedding (`shared`,
which the encoder and decoder look up), but transformers 5 forces `tie_word_embeddings=True` on
every mT5 config, so a model built from a config alone has them tied. `from_pretrained` unties
them when both are stored with different values; everything else that builds mT5 from a config
and then loads weights (exported folders, checkpoints, benchmarks) sets the layout here, by the
same rule: untied when both tensors are present and differ, tied otherwise.
"""
import torch
import torch.nn as nn

INPUT_KEY, OUTPUT_KEY = 'shared.weight', 'lm_head.weight'


def is_tied(mt5):
    """Whether mt5's output layer is its input embedding (one tensor)."""
    return mt5.get_output_embeddings().weight is mt5.get_input_embeddings().weight


def input_key(mt5):
    """The state-dict name of the input embedding (mBART: 'model.shared.weight')."""
    weight = mt5.get_input_embeddings().weight
    return next((name for name, p in mt5.named_parameters(remove_duplicate=False)
                 if p is weight), INPUT_KEY)


def state_is_tied(state, prefix='mt5_model.', input_name=INPUT_KEY):
    """The layout of weights in `state` (keys under `prefix`): tied unless both the input
    embedding and the output layer are there with different values, as from_pretrained decides."""
    shared, output = state.get(prefix + input_name), state.get(prefix + OUTPUT_KEY)
    if shared is None or output is None:
        return True
    return shared.shape == output.shape and torch.equal(shared, output)


def set_tied(mt5, tied):
    """Ties mt5's output layer to its input embedding, or gives it a copy of its own (same values:
    load the weights after). The config says the layout too, so that a later `tie_weights()` or a
    saved config.json does not tie an untied model again (google/mt5-base's says false)."""
    embedding = mt5.get_input_embeddings()
    output = mt5.get_output_embeddings()
    tied_keys = getattr(mt5, 'all_tied_weights_keys', None)  # transformers 5's record of ties
    if tied and not is_tied(mt5):
        output.weight = embedding.weight
        if tied_keys is not None:
            tied_keys[OUTPUT_KEY] = input_key(mt5)
    elif not tied and is_tied(mt5):
        output.weight = nn.Parameter(embedding.weight.detach().clone(),
                                     requires_grad=embedding.weight.requires_grad)
        if tied_keys is not None:
            tied_keys.pop(OUTPUT_KEY, None)
    mt5.config.tie_word_embeddings = tied
    return mt5


def match_state(model, state):
    """Gives `model`'s mT5 (if it has one) the layout of the checkpoint weights `state`, before
    they are loaded: a tied model would otherwise take one of two differing tensors for both, an
    untied one would train two copies of a tied checkpoint apart."""
    mt5 = getattr(model, 'mt5_model', None)
    if mt5 is not None:
        set_tied(mt5, state_is_tied(state, input_name=input_key(mt5)))


def describe(mt5):
    return 'tied' if is_tied(mt5) else 'untied'
