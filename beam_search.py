"""Beam search over several batches at once, step for step as Hugging Face's `generate` runs it.

`generate` decodes one batch at a time: every step reads the whole (vocabulary x d_model) output
layer for a few rows, keeps stepping sentences whose result can no longer change until the last
sentence of the batch ends, and computes and reorders the cross-attention keys and values once per
beam. Here each batch keeps its own decoder pass, cache and beam state, as `generate` has them,
while
- one output-layer product and log-softmax per step serve all the batches in flight (a pool of
  about `pool_rows` beam rows, refilled from the next batches as sentences end);
- a sentence leaves the pool as soon as its best hypotheses are final;
- the first step runs one row per sentence (all beams start identical), and the cross-attention
  cache is never reordered: with sdpa attention a sentence's beams share one copy of it
  (beam_attention.py), otherwise each beam holds its own.
The logits are the same up to float32 rounding (beam_attention.py, cpu_kernels.py); the tokens
are those of `generate` wherever two candidates are not within that rounding of each other.
The beam bookkeeping follows transformers' `GenerationMixin._beam_search`: the same top-k
candidates, length penalty, early-stopping heuristic and output padding, and the forced first and
last tokens of `forced_bos_token_id` / `forced_eos_token_id` (mBART's target language code and
</s>). It serves every language model of language_models.py (mT5, mBART, T5, ByT5).
"""
import contextlib

import torch
import transformers
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import beam_attention
import cpu_kernels
import language_models

# generation_config fields that add logits processors or change the search; with any of them
# set away from its default, callers fall back to Hugging Face's generate.
UNSUPPORTED_FIELDS = (
    'do_sample', 'num_beam_groups', 'diversity_penalty', 'num_return_sequences', 'min_length',
    'min_new_tokens', 'repetition_penalty', 'encoder_repetition_penalty', 'no_repeat_ngram_size',
    'encoder_no_repeat_ngram_size', 'bad_words_ids', 'force_words_ids', 'constraints',
    'forced_decoder_ids', 'remove_invalid_values',
    'exponential_decay_length_penalty', 'suppress_tokens', 'begin_suppress_tokens',
    'sequence_bias', 'renormalize_logits', 'guidance_scale', 'watermarking_config', 'max_time',
    'stop_strings', 'low_memory')
NEG = -1.0e9  # Hugging Face's score for impossible beams


def setting(config, name):
    """A generation_config value; unset (None) ones take the defaults generate() applies."""
    value = getattr(config, name, None)
    if value is None and hasattr(GenerationConfig, '_get_default_generation_params'):
        value = GenerationConfig._get_default_generation_params().get(name)
    return value


def unsupported_settings(generation_config, num_beams):
    """Why this search cannot reproduce `generate` for the config (empty list: it can)."""
    default = GenerationConfig()
    reasons = [f"{name}={setting(generation_config, name)!r}" for name in UNSUPPORTED_FIELDS
               if setting(generation_config, name) != setting(default, name)]
    if num_beams < 2:
        reasons.append(f"num_beams={num_beams} (greedy search)")
    # The beam bookkeeping and cache API reproduced here are those of transformers 5.
    if int(transformers.__version__.split('.')[0]) < 5:
        reasons.append(f"transformers {transformers.__version__} (needs 5 or later)")
    return reasons


class SearchSettings:
    """The generation_config values beam search reads, resolved as `generate` resolves them."""

    def __init__(self, config, num_beams, max_new_tokens, device):
        eos = config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.start = config.decoder_start_token_id
        # `pad or eos` as in generate: mT5's pad id 0 is falsy, so unfilled positions hold EOS.
        pad = config.pad_token_id
        self.fill = (pad or eos[0]) if eos else -1
        self.num_beams = num_beams
        self.keep = max(2, 1 + len(eos)) * num_beams
        self.max_length = 1 + max_new_tokens
        self.length_penalty = setting(config, 'length_penalty')
        self.forced_bos = config.forced_bos_token_id
        self.forced_eos = config.forced_eos_token_id
        self.early_stopping = setting(config, 'early_stopping')

    def force(self, log_probs, cur_len):
        """transformers' ForcedBOS / ForcedEOS logits processors, on log-probabilities."""
        forced = (self.forced_bos if cur_len == 1 else
                  self.forced_eos if cur_len == self.max_length - 1 else None)
        if forced is None:
            return log_probs
        log_probs.fill_(-float('inf'))
        log_probs[:, forced] = 0
        return log_probs


class BatchBeams:
    """One batch's beam search state; rows of sentences whose result is final are dropped."""

    def __init__(self, key, encoder_states, encoder_mask, settings, share_keys=False):
        self.key, self.settings, self.share_keys = key, settings, share_keys
        batch, beams, device = len(encoder_states), settings.num_beams, encoder_states.device
        self.states, self.mask = encoder_states, encoder_mask
        # Later steps pass a zero-stride stand-in of this shape (the cache holds the keys).
        self.state_shape = encoder_states.shape[1:]
        self.expanded = False  # beams get their own rows after the first step
        self.active = torch.arange(batch, device=device)  # sentence index of each active slot
        self.cur_len = 1
        self.cache = None
        shape = (batch, beams, settings.max_length)
        self.running = torch.full(shape, settings.fill, dtype=torch.long, device=device)
        self.running[:, :, 0] = settings.start
        self.running_scores = torch.zeros(batch, beams, device=device)
        self.running_scores[:, 1:] = NEG
        self.sequences = self.running.clone()
        self.scores = torch.full((batch, beams), NEG, device=device)
        self.finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
        self.improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
        # Final results of sentences that left the pool, by sentence index.
        self.best = torch.full((batch, settings.max_length), settings.fill, dtype=torch.long,
                               device=device)
        self.best_length = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def rows(self):
        """Beam rows in flight (before the first step, the rows it will have after it)."""
        return len(self.active) * self.settings.num_beams

    def decoder_hidden(self, mt5):
        """Last decoder states of the active rows, (rows, d_model), advancing the cache."""
        if not self.expanded:
            self.cache = EncoderDecoderCache(DynamicCache(config=mt5.config),
                                             DynamicCache(config=mt5.config))
            ids = self.running[:, 0, :1]
            encoder_states, mask = self.states, self.mask
        else:
            ids = self.running[:, :, self.cur_len - 1].reshape(-1, 1)
            mask = self.row_mask
            encoder_states = self.zero.expand(len(mask), *self.state_shape)
        decoder = mt5.get_decoder()
        with (beam_attention.shared_keys(decoder) if self.share_keys
              else contextlib.nullcontext()):
            out = decoder(input_ids=ids, encoder_hidden_states=encoder_states,
                          encoder_attention_mask=mask, past_key_values=self.cache,
                          use_cache=True, return_dict=True)
        return out.last_hidden_state[:, -1]

    def advance(self, log_probs):
        """One beam search step from the active rows' log-probabilities (rows, vocab)."""
        s, beams = self.settings, self.settings.num_beams
        if not self.expanded:  # first step: every beam of a sentence holds the same row
            log_probs = log_probs.repeat_interleave(beams, dim=0)
            if self.share_keys:  # one cross-attention row per sentence
                self.cache.self_attention_cache.batch_repeat_interleave(beams)
                self.row_mask = self.mask
            else:
                self.cache.batch_repeat_interleave(beams)
                self.row_mask = self.mask.repeat_interleave(beams, dim=0)
            self.zero = self.states.new_zeros(())
            self.states = self.mask = None
            self.expanded = True
        log_probs = s.force(log_probs, self.cur_len)
        count, vocab = len(self.active), log_probs.shape[-1]
        scores = log_probs.view(count, beams, vocab).add_(self.running_scores[:, :, None])
        top_scores, top_index = scores.view(count, -1).topk(s.keep)
        del scores, log_probs
        source_beam = top_index // vocab
        tokens = top_index % vocab
        top_sequences = self.running.gather(1, source_beam[..., None].expand(-1, -1, s.max_length))
        top_sequences[:, :, self.cur_len] = tokens
        hits = torch.isin(tokens, s.eos) | (self.cur_len + 1 >= s.max_length)
        self.continue_running(top_scores, top_sequences, source_beam, hits)
        self.update_finished(top_scores, top_sequences, hits)
        self.cur_len += 1
        self.update_improvable()
        self.retire_final(hits)

    def continue_running(self, top_scores, top_sequences, source_beam, hits):
        beams = self.settings.num_beams
        running_scores = top_scores + hits.to(torch.float32) * NEG
        keep = running_scores.topk(beams)[1]
        self.running = top_sequences.gather(1, keep[..., None].expand_as(self.running))
        self.running_scores = running_scores.gather(1, keep)
        self.next_rows = (source_beam.gather(1, keep)
                          + torch.arange(len(keep), device=keep.device)[:, None] * beams)

    def update_finished(self, top_scores, top_sequences, hits):
        s = self.settings
        top_beams = torch.arange(s.keep, device=hits.device) < s.num_beams
        just_finished = hits & top_beams
        generated = self.cur_len  # tokens after the decoder start, this one included
        candidates = top_scores / (generated ** s.length_penalty)
        full = torch.all(self.finished, dim=-1, keepdim=True) & (s.early_stopping is True)
        candidates += full.to(torch.float32) * NEG
        candidates += (~self.improvable).to(torch.float32) * NEG
        candidates += (~just_finished) * NEG
        merged_scores = torch.cat((self.scores, candidates), dim=1)
        best = merged_scores.topk(s.num_beams)[1]
        merged_sequences = torch.cat((self.sequences, top_sequences), dim=1)
        self.sequences = merged_sequences.gather(1, best[..., None].expand_as(self.sequences))
        self.scores = merged_scores.gather(1, best)
        self.finished = torch.cat((self.finished, just_finished), dim=1).gather(1, best)
        new_lengths = torch.full_like(just_finished, generated, dtype=torch.long)
        self.lengths = torch.cat((self.lengths, new_lengths), dim=1).gather(1, best)

    def update_improvable(self):
        s = self.settings
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            hypothetical_length = s.max_length - 1
        else:
            hypothetical_length = self.cur_len - 1
        best_running = self.running_scores[:, :1] / (hypothetical_length ** s.length_penalty)
        worst_finished = torch.where(self.finished,
                                     torch.min(self.scores, dim=1, keepdim=True)[0], NEG)
        self.improvable = self.improvable & torch.any(best_running > worst_finished, dim=-1,
                                                      keepdim=True)

    def retire_final(self, hits):
        """Stores and drops the sentences whose best hypothesis can no longer change, then
        reorders the self-attention cache to the surviving beams."""
        s = self.settings
        final = ~self.improvable[:, 0]
        if s.early_stopping is True:
            final |= torch.all(self.finished, dim=-1)
        if self.cur_len >= s.max_length or torch.all(hits):
            final[:] = True
        if final.any():
            done = self.active[final]
            self.best[done] = self.sequences[final, 0]
            self.best_length[done] = self.lengths[final, 0]
        keep = ~final
        rows = self.next_rows[keep].flatten()
        if not keep.all():
            self.select_sentences(keep)
        if len(self.active):
            self.cache.self_attention_cache.reorder_cache(rows)

    def select_sentences(self, keep):
        beams = self.settings.num_beams
        for name in ('active', 'running', 'running_scores', 'sequences', 'scores', 'finished',
                     'lengths', 'improvable'):
            setattr(self, name, getattr(self, name)[keep])
        kept = torch.nonzero(keep)[:, 0]
        if not self.share_keys:
            kept = (kept[:, None] * beams + torch.arange(beams, device=keep.device)).flatten()
        self.cache.cross_attention_cache.reorder_cache(kept)
        self.row_mask = self.row_mask[kept]

    @property
    def done(self):
        return len(self.active) == 0

    def result(self):
        """generate()'s output for the batch: best hypotheses, cropped to the longest."""
        return self.best[:, :1 + int(self.best_length.max())]


def pooled_generate(mt5, encoded_batches, num_beams, max_new_tokens, pool_rows=64):
    """Beam search for a stream of encoded batches, `(key, encoder_states, encoder_mask)`:
    yields `(key, ids)` for each batch as it ends (not necessarily in order), ids equal to
    `mt5.generate(encoder_outputs=..., attention_mask=mask, num_beams=..., max_new_tokens=...)`.
    New batches join while fewer than `pool_rows` beam rows are in flight."""
    reasons = unsupported_settings(mt5.generation_config, num_beams)
    if reasons:
        raise ValueError("pooled beam search cannot reproduce generate() with "
                         + ", ".join(reasons))
    share_keys = beam_attention.shares_keys(mt5.get_decoder())
    pending = iter(encoded_batches)
    in_flight = []
    while True:
        while pending is not None and sum(b.rows for b in in_flight) < pool_rows:
            batch = next(pending, None)
            if batch is None:
                pending = None
                break
            key, states, mask = batch
            settings = SearchSettings(mt5.generation_config, num_beams, max_new_tokens,
                                      states.device)
            in_flight.append(BatchBeams(key, states, mask, settings, share_keys))
        if not in_flight:
            return
        step(mt5, in_flight)
        for batch in [b for b in in_flight if b.done]:
            in_flight.remove(batch)
            yield batch.key, batch.result()


def pooled_generate_in_order(mt5, encoded_batches, num_beams, max_new_tokens, pool_rows=64):
    """pooled_generate, yielding `(key, ids)` in input order: each batch as soon as it and every
    batch before it have ended."""
    numbered = (((index, key), states, mask)
                for index, (key, states, mask) in enumerate(encoded_batches))
    finished, next_index = {}, 0
    for (index, key), ids in pooled_generate(mt5, numbered, num_beams, max_new_tokens, pool_rows):
        finished[index] = (key, ids)
        while next_index in finished:
            yield finished.pop(next_index)
            next_index += 1


def step(mt5, batches):
    """One decoding step for every batch in flight, with one output-layer product for all."""
    with cpu_kernels.onednn_linears(mt5.get_decoder()):
        hidden = [batch.decoder_hidden(mt5) for batch in batches]
    sizes = [len(h) for h in hidden]
    logits = language_models.output_logits(
        mt5, torch.cat(hidden) if len(hidden) > 1 else hidden[0]).float()
    # In place (the same kernel and values as log_softmax): the pool's largest tensor, once.
    log_probs = torch._log_softmax(logits, -1, False, out=logits)
    for batch, part in zip(batches, log_probs.split(sizes)):
        batch.advance(part)
