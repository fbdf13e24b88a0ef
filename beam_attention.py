"""Cross-attention whose keys and values are stored once per sentence and shared by its beams.

Hugging Face's beam search repeats each sentence's cross-attention keys and values once per beam
(num_beams copies of a (layers x 2 x heads x frames x d_kv) cache, by its shape about 220 MB
per batch of 4 at mt5-base) and reads every copy at every step. The beams of a sentence attend
to the same encoder states, so their query rows can instead be folded into the query length of
one attention over the sentence's single copy: the same attention, row by row, as the same scaled
dot-product kernel computes it for a batch of queries (outputs equal up to float32 rounding).

`shared_keys(decoder)` switches a decoder to this attention for the duration of a call: its
attention implementation becomes `FOLDED_SDPA`, which runs transformers' sdpa attention and folds
the beams wherever the keys hold fewer rows than the queries. It applies to decoders that use
sdpa attention (the default of every language model in language_models.py); `shares_keys` says
whether a decoder does.
"""
import contextlib

from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

FOLDED_SDPA = 'sdpa_beams_share_keys'


def fold_beams(tensor, rows, beams):
    """A mask or bias with one entry per beam row -> one per sentence (a sentence's beams hold
    equal ones); tensors already per sentence, or broadcast over the batch, pass unchanged."""
    if tensor is None or tensor.dim() != 4 or tensor.shape[0] != rows:
        return tensor
    return tensor.view(rows // beams, beams, *tensor.shape[1:])[:, 0]


def folded_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention; when the keys hold one row per sentence and the queries one
    row per beam (a single query position each), the beams become the query length."""
    rows, sentences, length = query.shape[0], key.shape[0], query.shape[2]
    if rows == sentences:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if length != 1 or rows % sentences:
        raise ValueError(f"cannot share keys of {sentences} sentences among {rows} query rows "
                         f"of length {length}")
    beams, heads, dim = rows // sentences, query.shape[1], query.shape[3]
    folded = query.view(sentences, beams, heads, dim).transpose(1, 2)
    kwargs['position_bias'] = fold_beams(kwargs.get('position_bias'), rows, beams)
    kwargs['is_causal'] = False
    output, weights = sdpa_attention_forward(module, folded, key, value,
                                             fold_beams(attention_mask, rows, beams), **kwargs)
    # (sentences, beams, heads, dim): query positions are the beams, in row order
    return output.reshape(rows, 1, heads, dim), weights


AttentionInterface.register(FOLDED_SDPA, folded_sdpa_attention)
AttentionMaskInterface.register(FOLDED_SDPA, sdpa_mask)


def shares_keys(decoder):
    """Whether `shared_keys` applies to this decoder (it attends with sdpa)."""
    return getattr(decoder.config, '_attn_implementation', None) in ('sdpa', FOLDED_SDPA)


@contextlib.contextmanager
def shared_keys(decoder):
    """The decoder attends with folded_sdpa_attention inside the block, as before after it."""
    config = decoder.config
    before = config._attn_implementation
    config._attn_implementation = FOLDED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = before
