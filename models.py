"""The two models on the shared pose encoder (pose_encoder.py), and whole-checkpoint loading.

`SignTranslator` (Uni-Sign's pose-only model, also `Uni_Sign`): the pose features are projected
by `pose_proj` to mT5's width, prefixed with the embedded prompt of the dataset's language, and
mT5 writes the text (or the gloss string, for CSLR with --head generate). Same computation and
state-dict keys as Uni-Sign, so its checkpoints load. `target_logits` 'real' applies the
vocabulary projection and the cross-entropy to real target tokens only ('all': every padded
position, as Uni-Sign); `embed_once` looks the prompt and the decoder inputs up in one embedding
call whose gradient, when the table is tied to the output layer, is row-sparse and added into
the output layer's (untied, as in google/mt5-base, one dense gradient instead of one per lookup).

`CTCRecognizer` (VAC / SMKD): the pose features, edge-padded as VAC pads clips, go to
ctc_head.CTCHead (temporal convolution, BiLSTM, gloss classifier; sequence CTC, convolution CTC
and distillation). No mT5 is built.

With --use_signcl, --use_sst or --use_hyperbolic, `regularizers` holds the enabled auxiliary
losses (training_losses.py combines them with the head's loss); with none it is empty and
forward computes exactly Uni-Sign's (or VAC's) loss. Their weights live under `regularizers.*`:
checkpoints without them load (the regularisers start fresh) and theirs load into a model
without them.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import beam_search
import config
import cpu_kernels
import fusion
import language_models
import mt5_layout
import regularizers
from ctc_head import CTCHead, parse_loss_weights
from keypoints import PARTS
from mapper import build_mapper
from pose_encoder import (ENCODER_PREFIXES, SPEED_CHOICES, SPEED_DEFAULTS, UNISIGN_SPEED,  # noqa: F401
                          PoseEncoder, check_speed, flag_differences, init_linear, key_list,
                          load_checkpoint_file, load_encoder_weights, read_checkpoint, speed_options, trunc_normal_inverse_cdf_)
from training_losses import RegularizerInputs, regularized_loss, signcl_term

RGB_KEY_PREFIXES = ('rgb_support_backbone.', 'rgb_proj.', 'fusion_pose_rgb_', 'fusion_gate.')
REGULARIZER_PREFIX = 'regularizers.'
IGNORE_INDEX = -100


MT5_WEIGHT_FILES = language_models.WEIGHT_FILES
TOKENIZER_FILES = language_models.TOKENIZER_FILES['mt5']


def check_mt5_folder(path, weights=True, lm='auto'):
    """Raises ConfigError naming what an mT5 (or other language-model, language_models.py)
    folder lacks: its config, weights (unless `weights` is False) or tokenizer (a folder without
    one would otherwise load a tokenizer that maps every character to <unk>)."""
    if not os.path.isdir(path):
        raise config.ConfigError(f"the mT5 folder {path} does not exist")
    kind = language_models.resolve(path, lm) if os.path.isfile(
        os.path.join(path, "config.json")) else 'mt5'
    tokenizer_files = language_models.TOKENIZER_FILES[kind]
    needed = {"config.json": ("config.json",),
              "weights (model.safetensors or pytorch_model.bin)": MT5_WEIGHT_FILES if weights else (),
              f"tokenizer ({' or '.join(tokenizer_files)})": tokenizer_files}
    lacking = [what for what, names in needed.items()
               if names and not any(os.path.isfile(os.path.join(path, n)) for n in names)]
    if lacking:
        raise config.ConfigError(f"the mT5 folder {path} has no {', no '.join(lacking)}: "
                                 "download the whole model folder (e.g. google/mt5-base)")
    check_mt5_config(os.path.join(path, "config.json"))


def check_mt5_config(path):
    """A config.json that is not a JSON object (cut short, or another file) stops here, before
    transformers fails on it with a traceback."""
    language_models.read_json(path, required="d_model")


def load_mt5(path, lm='auto'):
    """mT5 (or the --lm model) from its folder, with the output-layer layout of its weights
    (mt5_layout.py); a damaged folder raises ConfigError naming it."""
    check_mt5_folder(path, lm=lm)
    try:
        mt5 = language_models.model_class(language_models.resolve(path, lm)).from_pretrained(path)
    except Exception as error:  # transformers and safetensors raise many kinds for bad files
        raise config.ConfigError(f"the mT5 folder {path} cannot be loaded ("
                                 f"{type(error).__name__}: {str(error).strip()[:200]})") from None
    return mt5_layout.set_tied(mt5, mt5_layout.is_tied(mt5))  # the config says what was loaded


def load_tokenizer(path, args=None):
    """The language model's tokenizer from its folder (check_mt5_folder's rules); `args` give
    --lm and mBART's language code."""
    lm = getattr(args, 'lm', 'auto')
    check_mt5_folder(path, weights=False, lm=lm)
    return read_tokenizer(path, language_models.resolve(path, lm), args)


def read_tokenizer(path, kind='mt5', args=None):
    """The tokenizer files of a folder; ConfigError naming it when they cannot be loaded."""
    code = language_models.language_code(args) if kind == 'mbart' else None
    return language_models.read_tokenizer(path, kind, code)


def prompt_of(args):
    """(language, prompt) of the run: the flags' language (set from the dataset registry and
    stored in checkpoints), else the registered dataset's."""
    language = getattr(args, 'language', None) or config.get_dataset(args.dataset).language
    return language, config.PROMPT.format(language)


class SignTranslator(PoseEncoder):
    """Pose sequence -> mT5 input embeddings -> text (Uni-Sign, pose only)."""

    def __init__(self, args, mt5_model=None, tokenizer=None):
        if args.rgb_support:
            raise NotImplementedError("the RGB branch (rgb_support) is not supported")
        super().__init__(args)
        self.args = args
        self.label_smoothing = args.label_smoothing
        self.max_tgt_len = args.max_tgt_len
        self.compute_fp32_loss = args.compute_fp32_loss
        self.lang, self.prompt = prompt_of(args)
        self.modes = list(PARTS)
        lm = getattr(args, 'lm', 'auto')
        if mt5_model is None:
            check_mt5_folder(args.mt5_path, lm=lm)
            self.lm = language_models.resolve(args.mt5_path, lm)
            language_models.check_lang_code(args, self.lm)
        else:
            self.lm = language_models.kind_of(mt5_model.config.model_type, args.mt5_path)
        mt5_config = mt5_model.config if mt5_model is not None else language_models.config_class(
            self.lm).from_pretrained(args.mt5_path)
        self.pose_proj = build_mapper(getattr(args, 'mapper', 'linear'), self.frame_dim,
                                      mt5_config.d_model)
        self.pose_positions = args.pose_positions
        self.apply(init_linear)  # before mT5 is attached: its weights stay as loaded
        if mt5_model is None:
            mt5_model = load_mt5(args.mt5_path, lm)
        if tokenizer is None:
            tokenizer = load_tokenizer(args.mt5_path, args)
        self.mt5_model = language_models.set_generation(mt5_model, tokenizer, self.lm)
        self.mt5_tokenizer = tokenizer
        if getattr(args, 'gradient_checkpointing', False):
            # Training calls mT5 with use_cache=False (run_mt5): no cache to drop.
            mt5_model.gradient_checkpointing_enable({'use_reentrant': False})
        self.build_regularizers(args, self.hidden_dim, mt5_config.d_model)

    def build_regularizers(self, args, part_dim, d_model):
        # Built last, so enabling a regulariser leaves the other weights a seed draws unchanged.
        self.regularizers = regularizers.build_regularizers(args, part_dim, d_model)
        options = regularizers.options(args)
        self.loss_weights = {'signcl': options['signcl_weight'], 'sst': options['sst_weight']}
        hyperbolic = self.regularizers['hyperbolic'] if 'hyperbolic' in self.regularizers else None
        self.hyp_text_source = hyperbolic.text_emb_src if hyperbolic is not None else None
        self.needs_decoder_states = 'sst' in self.regularizers or self.hyp_text_source == 'decoder'
        # Fraction of the optimizer steps done; the trainer sets it before each step (it drives
        # the hyperbolic CE weight schedule).
        self.progress = 0.0

    def prompt_tokens(self, batch_size, device):
        tokens = self.mt5_tokenizer([self.prompt] * batch_size, padding='longest',
                                    truncation=True, return_tensors='pt')
        return tokens['input_ids'].to(device), tokens['attention_mask'].to(device)

    def prefix_tokens(self, src_input, batch_size, device):
        """Prompt ids and mask, from the batch (tokenised by the dataset) or tokenised here."""
        if 'prefix_ids' in src_input:
            return src_input['prefix_ids'].to(device), src_input['prefix_mask'].to(device)
        return self.prompt_tokens(batch_size, device)

    def project_pose(self, features):
        """(B, T, 4*C) pose features -> (B, T, d_model) mT5 input embeddings; with
        `--pose_positions sinusoidal` each frame also carries its position."""
        embeds = self.pose_proj(features)
        if self.pose_positions == 'sinusoidal':
            embeds = embeds + sinusoidal_positions(embeds.shape[1], embeds.shape[2]).to(embeds)
        return embeds

    def embed_inputs(self, src_input, batch_size=None, pose_embeds=None):
        """mT5 encoder inputs: (prompt + pose embeddings (B, P+T, D), attention mask (B, P+T))."""
        if pose_embeds is None:
            pose_embeds = self.project_pose(self.encode_pose(src_input))
        device = pose_embeds.device
        prefix_ids, prefix_mask = self.prefix_tokens(src_input, batch_size or len(pose_embeds),
                                                     device)
        prefix_embeds = self.mt5_model.get_encoder().embed_tokens(prefix_ids)
        inputs_embeds = torch.cat([prefix_embeds, pose_embeds], dim=1)
        attention_mask = torch.cat([prefix_mask, src_input['attention_mask'].to(device)], dim=1)
        return inputs_embeds, attention_mask

    def target_labels(self, tgt_input, device):
        """Target ids (B, L) with padding as -100, from the batch or tokenised here."""
        if 'labels' in tgt_input:
            return tgt_input['labels'].to(device)
        tokens = self.mt5_tokenizer(tgt_input['gt_sentence'], return_tensors='pt', padding=True,
                                    truncation=True, max_length=self.max_tgt_len)
        labels = tokens['input_ids']
        labels[labels == self.mt5_tokenizer.pad_token_id] = IGNORE_INDEX
        return labels.to(device)

    def forward(self, src_input, tgt_input):
        parts = self.encode_parts(src_input)
        pose_embeds = self.project_pose(self.fuse_parts(parts))
        device = pose_embeds.device
        labels = self.target_labels(tgt_input, device)
        decoder_input_ids = self.mt5_model.prepare_decoder_input_ids_from_labels(labels=labels)
        prefix_ids, prefix_mask = self.prefix_tokens(src_input, len(pose_embeds), device)
        if self.embed_once == 'on':
            embedding = self.mt5_model.get_input_embeddings()
            # Untied, the table's gradient is its own: it must be dense for the optimizer.
            prefix_embeds, decoder_embeds = embed_together(
                embedding, prefix_ids, decoder_input_ids,
                sparse_grad=mt5_layout.is_tied(self.mt5_model))
        else:
            prefix_embeds = self.mt5_model.get_encoder().embed_tokens(prefix_ids)
            decoder_embeds = None
        inputs_embeds = torch.cat([prefix_embeds, pose_embeds], dim=1)
        attention_mask = torch.cat([prefix_mask, src_input['attention_mask'].to(device)], dim=1)
        mt5_out = self.run_mt5(inputs_embeds, attention_mask, decoder_input_ids, decoder_embeds,
                               labels)
        logits = mt5_out['logits'].float() if self.compute_fp32_loss else mt5_out['logits']
        loss = F.cross_entropy(logits, mt5_out['targets'], ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)
        out = {'loss': loss, 'ce_loss': loss.detach(), 'inputs_embeds': inputs_embeds,
               'attention_mask': attention_mask}
        if self.target_logits == 'all':
            out['logits'] = mt5_out['logits'].view(*labels.shape, -1)
        else:
            out['token_logits'] = mt5_out['logits']
        if len(self.regularizers):
            inputs = self.regularizer_inputs(src_input, parts, pose_embeds, labels, mt5_out)
            out.update(regularized_loss(self.regularizers, self.loss_weights, loss, inputs,
                                        self.progress))
        return out

    def run_mt5(self, inputs_embeds, attention_mask, decoder_input_ids, decoder_embeds, labels):
        """Teacher-forced mT5: {'logits' (rows, V), 'targets' (rows,), 'encoder_states',
        'decoder_states'}; the rows are every target position, or with target_logits 'real'
        only those that are not padding (the same mean cross-entropy)."""
        decoder_ids = decoder_input_ids if decoder_embeds is None else None
        if self.target_logits == 'all':
            # Explicit decoder inputs: the logits of passing `labels`, without mT5 also computing
            # its own (unsmoothed) loss.
            out = self.mt5_model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                decoder_input_ids=decoder_ids, decoder_inputs_embeds=decoder_embeds,
                use_cache=False, output_hidden_states=self.needs_decoder_states, return_dict=True)
            logits, targets = out.logits.flatten(0, 1), labels.flatten()
            encoder_states = out.encoder_last_hidden_state
            decoder_states = out.decoder_hidden_states[-1] if self.needs_decoder_states else None
        else:
            encoder_states = self.mt5_model.get_encoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                return_dict=True).last_hidden_state
            decoder_states = self.mt5_model.get_decoder()(
                input_ids=decoder_ids, inputs_embeds=decoder_embeds,
                encoder_hidden_states=encoder_states, encoder_attention_mask=attention_mask,
                use_cache=False, return_dict=True).last_hidden_state
            # The row count is data-dependent, so on a GPU this waits for it once per step:
            # far cheaper than the padded rows' products with the whole vocabulary.
            real = labels != IGNORE_INDEX
            logits = language_models.output_logits(self.mt5_model, decoder_states[real])
            targets = labels[real]
        return {'logits': logits, 'targets': targets, 'encoder_states': encoder_states,
                'decoder_states': decoder_states}

    def regularizer_inputs(self, src_input, parts, pose_embeds, labels, mt5_out):
        """The features the enabled regularisers read (see training_losses.RegularizerInputs)."""
        encoder_states = mt5_out['encoder_states']
        prompt_length = encoder_states.shape[1] - pose_embeds.shape[1]
        token_embeds = None
        if self.hyp_text_source == 'token':
            token_embeds = self.mt5_model.get_input_embeddings()(labels.clamp_min(0))
        return RegularizerInputs(
            frame_mask=src_input['attention_mask'].to(pose_embeds.device),
            text_mask=labels != IGNORE_INDEX, pose_embeds=pose_embeds, part_features=parts,
            pose_states=encoder_states[:, prompt_length:],
            decoder_states=mt5_out['decoder_states'] if self.needs_decoder_states else None,
            token_embeds=token_embeds)

    @torch.no_grad()
    def generate(self, pre_compute_item, max_new_tokens=100, num_beams=4, **generate_kwargs):
        """Token ids from forward's output, or from a src_input batch (encoded here).
        Extra keyword arguments go to the Hugging Face `generate` (e.g. synced_gpus)."""
        if 'inputs_embeds' in pre_compute_item:
            inputs_embeds = pre_compute_item['inputs_embeds']
            attention_mask = pre_compute_item['attention_mask']
        else:
            inputs_embeds, attention_mask = self.embed_inputs(pre_compute_item)
        return self.mt5_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                       max_new_tokens=max_new_tokens, num_beams=num_beams,
                                       **generate_kwargs)

    @torch.no_grad()
    def encode(self, src_input):
        """mT5 encoder states (B, P+T, D) and their attention mask, as generate() computes them
        at every unmasked position (padding skipped: encode_real_frames, encode_real_positions)."""
        pose_embeds = self.project_pose(self.fuse_parts(self.encode_real_frames(src_input)))
        inputs_embeds, attention_mask = self.embed_inputs(src_input, pose_embeds=pose_embeds)
        encoder = self.mt5_model.get_encoder()
        with cpu_kernels.onednn_linears(encoder):
            states = language_models.encode_real_positions(encoder, inputs_embeds, attention_mask)
        return states, attention_mask

    @torch.no_grad()
    def generate_pooled(self, src_inputs, max_new_tokens=100, num_beams=4, pool_rows=64):
        """generate() for a sequence of batches, one id tensor per batch in order, equal to
        generate()'s batch by batch: each batch is encoded on its own, and beam search runs over
        about `pool_rows` beam rows of several batches at once (beam_search.pooled_generate)."""
        encoded = ((None, *self.encode(src)) for src in src_inputs)
        return [ids for _, ids in beam_search.pooled_generate_in_order(
            self.mt5_model, encoded, num_beams, max_new_tokens, pool_rows)]

    def generate_text(self, pre_compute_item, max_new_tokens=100, num_beams=4):
        ids = self.generate(pre_compute_item, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return self.mt5_tokenizer.batch_decode(ids, skip_special_tokens=True)


Uni_Sign = SignTranslator


# VAC pads each clip with 6 copies of its first and last frames and rounds it up to a multiple of
# the pooling stride, so K5-P2-K5-P2 gives exactly ceil(frames / 4) outputs.
EDGE_PAD, POOL_STRIDE = 6, 4


def padded_lengths(lengths):
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return (lengths + POOL_STRIDE - 1) // POOL_STRIDE * POOL_STRIDE + 2 * EDGE_PAD


def pad_clip_edges(src_input):
    """Part tensors with EDGE_PAD copies of each clip's first frame before it and its last frame
    after it (VAC's padding), and the new lengths."""
    lengths = src_input.get("src_length_batch")
    if lengths is None:
        lengths = src_input["attention_mask"].sum(1)
    lengths = lengths.detach().cpu().long()
    new_lengths = padded_lengths(lengths)
    steps = torch.arange(int(new_lengths.max()))
    rows = torch.minimum((steps[None, :] - EDGE_PAD).clamp(min=0), lengths[:, None] - 1)
    device = src_input["body"].device
    batch = torch.arange(len(lengths), device=device)[:, None]
    return {part: src_input[part][batch, rows.to(device)] for part in PARTS}, new_lengths


class CTCRecognizer(PoseEncoder):
    """The pose encoder (Uni-Sign's keys) + CTCHead on its (B, T, 4C) frame features."""

    def __init__(self, args, num_classes):
        super().__init__(args)
        # Both hands share one encoder. Normalised apart in training (Uni-Sign) its BatchNorm
        # keeps running statistics of the mixture, so evaluation sees other statistics than
        # training did; one joint batch keeps the two consistent.
        if self.hands_batch == "auto":
            self.hands_batch = "joint"
        self.apply(init_linear)  # the translator's initialisation, before the head is added
        self.head = CTCHead(self.frame_dim, num_classes, hidden_size=args.ctc_hidden,
                            share_classifier=args.share_classifier, weight_norm=args.weight_norm,
                            loss_weights=parse_loss_weights(args.loss_weights) or None)
        # SignCL on the frame features; the flags refuse the regularisers that need text.
        self.regularizers = regularizers.build_regularizers(args, self.hidden_dim, self.frame_dim)
        self.signcl_weight = regularizers.options(args)["signcl_weight"]

    def output_lengths(self, frames):
        """CTC frames the head gives for clips of `frames` frames."""
        return self.head.conv1d.output_lengths(padded_lengths(frames))

    def forward(self, src_input, tgt_input=None):
        """conv_logits / seq_logits (T', B, C) and feat_len (B,); with targets also 'loss' and
        'stats' (the weighted terms: seqctc_loss, convctc_loss, dist_loss, and signcl_loss)."""
        parts, lengths = pad_clip_edges(src_input)
        features = self.encode_pose(parts)
        out = self.head(features, lengths)
        if tgt_input is None or "gloss_ids" not in tgt_input:
            return out
        device = out["seq_logits"].device
        gloss_lengths = tgt_input["gloss_lengths"].to(device)
        loss, loss_parts = self.head.loss(out, tgt_input["gloss_ids"].to(device), gloss_lengths)
        stats = {f"{name.lower()}_loss": value for name, value in loss_parts.items()}
        if "signcl" in self.regularizers:
            frame_mask = (torch.arange(features.shape[1])[None, :] < lengths[:, None]).to(device)
            inputs = RegularizerInputs(frame_mask=frame_mask.long(), text_mask=None,
                                       pose_embeds=features, part_features=(), pose_states=None,
                                       text_lengths=gloss_lengths)
            signcl_loss = signcl_term(self.regularizers["signcl"], inputs, stats)
            loss = loss + self.signcl_weight * signcl_loss
            stats["signcl_loss"] = signcl_loss.detach()
        return {**out, "loss": loss, "stats": stats}


def sinusoidal_positions(length, dim):
    """(length, dim) sine/cosine position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[:dim // 2])
    return table


def embed_together(embedding, first_ids, second_ids, sparse_grad=False):
    """Two id tensors through one embedding call. With sparse_grad the table gets a row-sparse
    gradient, which autograd adds into the dense gradient of a tied output layer, instead of a
    dense (vocabulary x d_model) one: the same sum without zero-filling the whole table."""
    dense, embedding.sparse = embedding.sparse, sparse_grad
    try:
        rows = embedding(torch.cat([first_ids.flatten(), second_ids.flatten()]))
    finally:
        embedding.sparse = dense
    first, second = rows.split([first_ids.numel(), second_ids.numel()])
    return first.view(*first_ids.shape, -1), second.view(*second_ids.shape, -1)


def get_requires_grad_dict(model):
    """State dict to save: trainable parameters (under every alias) and all buffers."""
    return {name: tensor.detach() for name, tensor in model.state_dict(keep_vars=True).items()
            if not isinstance(tensor, nn.Parameter) or tensor.requires_grad}


def check_vocabulary(model, state, source):
    if not hasattr(model, 'mt5_model'):
        return
    model_vocab = model.mt5_model.get_input_embeddings().weight.shape[0]
    for key in ('mt5_model.' + mt5_layout.input_key(model.mt5_model),
                'mt5_model.lm_head.weight'):
        if key in state and state[key].shape[0] != model_vocab:
            raise config.ConfigError(
                f"checkpoint {source}: mT5 vocabulary size {state[key].shape[0]} ({key}) differs "
                f"from the model's {model_vocab}; load the same mt5_path the checkpoint was "
                "trained with")


def load_checkpoint_weights(model, path_or_state_dict, source=None):
    """Loads a Uni-Sign/Geo-Sign checkpoint ({'model': state_dict} or a bare state dict).

    mT5's output layer takes the checkpoint's layout first (mt5_layout.match_state): untied
    when its `mt5_model.shared` and `mt5_model.lm_head` weights differ, tied when they are equal.
    RGB-branch keys and the weights of regularisers the model does not enable are dropped and
    reported; regularisers the checkpoint lacks keep their fresh weights; any other mismatch
    raises naming the source. Returns {'source', 'loaded_keys', 'dropped_rgb_keys',
    'dropped_regularizer_keys', 'fresh_regularizer_keys'}; `source` names where a state dict
    came from.
    """
    source, state = read_checkpoint(path_or_state_dict, source)
    expected = model.state_dict()
    dropped = sorted(key for key in state if key.startswith(RGB_KEY_PREFIXES))
    dropped_regularizer = sorted(key for key in state
                                 if key.startswith(REGULARIZER_PREFIX) and key not in expected)
    for key in dropped + dropped_regularizer:
        del state[key]
    check_vocabulary(model, state, source)
    fusion.check_checkpoint_fusion(model, state, source)
    mt5_layout.match_state(model, state)
    fresh = sorted(key for key in expected if key.startswith(REGULARIZER_PREFIX) and key not in state)
    missing = set(expected) - set(state) - set(fresh)
    unexpected = set(state) - set(expected)
    wrong_shape = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                   for key in set(state) & set(expected) if state[key].shape != expected[key].shape]
    if missing or unexpected or wrong_shape:
        raise config.ConfigError(
            f"checkpoint {source} does not match the model"
            f"{flag_differences(path_or_state_dict, model)}: "
            f"missing keys [{key_list(missing)}]; unexpected keys [{key_list(unexpected)}]; "
            f"shape mismatches [{key_list(wrong_shape)}]")
    model.load_state_dict(state, strict=not fresh)
    return {'source': source, 'loaded_keys': len(state), 'dropped_rgb_keys': dropped,
            'dropped_regularizer_keys': dropped_regularizer, 'fresh_regularizer_keys': fresh}
