"""Pose-only sign language translator: four ST-GCN part encoders feeding an mT5 model.

Same computation and state-dict keys as Uni-Sign's pose-only model (so its checkpoints load):
each body part (x, y, score) is projected by `proj_linear`, encoded by a spatial chain
(`gcn_modules`), enriched with the detached body feature of its anchor joint, encoded by a
temporal chain (`fusion_gcn_modules`) and averaged over joints. The four part features are
concatenated, shifted by `part_para`, projected by `pose_proj` to mT5's width and prefixed
with the embedded prompt "Translate sign language video to {lang}: ".

The left hand reuses the right hand's modules; both names stay in the state dict.

Speed switches (flags read by the constructor, then attributes set with `set_speed`; each keeps
the loss, the gradients and the running statistics of Uni-Sign's computation up to float
rounding; bench/train_step.py measures them): `graph_product` 'matmul' or 'einsum' and
`temporal_conv` 'direct' or 'winograd' (stgcn_layers.py); `hands_batch` 'on' runs both hands
through their shared encoder as one batch with per-hand BatchNorm statistics ('auto': on CUDA
only, where it saves kernel launches; on CPU it measured no faster; 'joint' also normalises both
hands with one statistic, which is not Uni-Sign's model); `target_logits` 'real'
applies the vocabulary projection and the cross-entropy to real target tokens only, 'all' to
every padded position as Uni-Sign does; `embed_once` looks the prompt and the decoder inputs up
in one embedding call whose gradient, when the table is tied to the output layer (as mT5 is
here), is row-sparse and added into the output layer's, so no (vocabulary x d_model) gradient is
zero-filled and summed per lookup; `compile_encoder` compiles the part encoders with
torch.compile. UNISIGN_SPEED is Uni-Sign's way, SPEED_DEFAULTS the trainer's.

With --use_signcl, --use_sst or --use_hyperbolic, `regularizers` holds the enabled auxiliary losses
(training_losses.py combines them with the cross-entropy); with none, it is an empty ModuleDict and
forward computes exactly Uni-Sign's loss. Their weights live under `regularizers.*`: checkpoints
without them load (the regularisers start fresh) and theirs load into a model without them.
"""
import math
import os
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

import beam_search
import regularizers
from stgcn_layers import (GRAPH_PRODUCTS, TEMPORAL_CONVS, Graph, batch_groups, get_stgcn_chain,
                          set_graph_product, set_temporal_conv)
from training_losses import RegularizerInputs, regularized_loss

PARTS = ('body', 'left', 'right', 'face_all')
# body joint whose spatial feature is added (detached) to each other part
BODY_ANCHOR_JOINT = {'left': -2, 'right': -1, 'face_all': 0}
RGB_KEY_PREFIXES = ('rgb_support_backbone.', 'rgb_proj.', 'fusion_pose_rgb_', 'fusion_gate.')
REGULARIZER_PREFIX = 'regularizers.'
# The pose encoder's keys, shared by the translator, the CTC recognizer and Uni-Sign checkpoints.
ENCODER_PREFIXES = ('proj_linear.', 'gcn_modules.', 'fusion_gcn_modules.', 'part_para')
IGNORE_INDEX = -100
SPEED_DEFAULTS = {'graph_product': 'matmul', 'temporal_conv': 'direct', 'hands_batch': 'auto',
                  'target_logits': 'real', 'embed_once': 'on', 'compile_encoder': False}
SPEED_CHOICES = {'graph_product': GRAPH_PRODUCTS, 'temporal_conv': TEMPORAL_CONVS,
                 'hands_batch': ('auto', 'on', 'off', 'joint'), 'target_logits': ('real', 'all'),
                 'embed_once': ('on', 'off')}
UNISIGN_SPEED = {'graph_product': 'einsum', 'temporal_conv': 'direct', 'hands_batch': 'off',
                 'target_logits': 'all', 'embed_once': 'off', 'compile_encoder': False}


def speed_options(args):
    """The speed switches of `args` (missing ones take SPEED_DEFAULTS), checked."""
    return check_speed({name: getattr(args, name, None) for name in SPEED_DEFAULTS},
                       defaults=SPEED_DEFAULTS)


def check_speed(switches, defaults=None):
    """Switches with booleans turned into 'on'/'off' and None into `defaults`; raises naming
    an unknown switch or value."""
    checked = {}
    for name, value in switches.items():
        if name not in SPEED_DEFAULTS:
            raise ValueError(f"unknown speed switch {name!r}; "
                             f"expected one of {list(SPEED_DEFAULTS)}")
        if value is None and defaults is not None:
            value = defaults[name]
        if isinstance(value, bool) and name in SPEED_CHOICES:
            value = 'on' if value else 'off'
        if value is not None and name in SPEED_CHOICES and value not in SPEED_CHOICES[name]:
            raise ValueError(f"--{name} {value!r}: expected one of {SPEED_CHOICES[name]}")
        checked[name] = value
    return checked


def prompt_for(dataset):
    """The task prompt and its language for a dataset name ('CSL*' datasets are Chinese)."""
    lang = 'Chinese' if 'CSL' in dataset else 'English'
    return lang, f"Translate sign language video to {lang}: "


@torch.no_grad()
def trunc_normal_inverse_cdf_(tensor, std=.02, a=-2., b=2.):
    """Truncated normal N(0, std) on [a, b] by inverse-CDF sampling.

    Uni-Sign's sampling scheme (older PyTorch `nn.init.trunc_normal_` switched to rejection
    sampling), kept so a given seed draws the same initial weights.
    """
    def normal_cdf(x):
        return (1. + math.erf(x / std / math.sqrt(2.))) / 2.
    tensor.uniform_(2 * normal_cdf(a) - 1, 2 * normal_cdf(b) - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.)).clamp_(min=a, max=b)


def init_linear(module):
    """Truncated normal (std 0.02) weights and zero biases for Linear layers."""
    if isinstance(module, nn.Linear):
        trunc_normal_inverse_cdf_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SignTranslator(nn.Module):
    """Pose sequence -> mT5 input embeddings -> text (Uni-Sign, pose only)."""

    def __init__(self, args, mt5_model=None, tokenizer=None):
        super().__init__()
        if getattr(args, 'rgb_support', False):
            raise NotImplementedError("the RGB branch (rgb_support) is not supported")
        self.args = args
        channels = list(getattr(args, 'stgcn_channels', (64, 128, 256)))
        hidden_dim = getattr(args, 'hidden_dim', channels[-1])
        if hidden_dim != channels[-1]:
            raise ValueError(f"hidden_dim ({hidden_dim}) must equal the last ST-GCN width "
                             f"({channels[-1]})")
        self.label_smoothing = getattr(args, 'label_smoothing', 0.2)
        self.max_tgt_len = getattr(args, 'max_tgt_len', 50)
        self.lang, self.prompt = prompt_for(args.dataset)
        self.modes = list(PARTS)
        self.build_pose_encoder(channels, getattr(args, 'temporal_layers', 3),
                                getattr(args, 'temporal_kernel', 5))
        self.set_speed(**speed_options(args))
        self.part_para = nn.Parameter(torch.zeros(hidden_dim * len(PARTS)))
        config = mt5_model.config if mt5_model is not None else MT5Config.from_pretrained(
            args.mt5_path)
        self.pose_proj = nn.Linear(hidden_dim * len(PARTS), config.d_model)
        self.pose_positions = getattr(args, 'pose_positions', 'none')
        self.apply(init_linear)  # before mT5 is attached: its weights stay as loaded
        if mt5_model is None:
            mt5_model = MT5ForConditionalGeneration.from_pretrained(args.mt5_path)
        if tokenizer is None:
            tokenizer = T5Tokenizer.from_pretrained(args.mt5_path, legacy=False)
        self.mt5_model = mt5_model
        self.mt5_tokenizer = tokenizer
        self.build_regularizers(args, hidden_dim, config.d_model)

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

    def set_speed(self, **switches):
        """Sets speed switches by name (see SPEED_CHOICES; compile_encoder=True compiles the
        part encoders in place, keeping their state-dict keys); None leaves one as it is."""
        switches = check_speed(switches)
        if switches.get('graph_product') is not None:
            set_graph_product(self, switches['graph_product'])
        if switches.get('temporal_conv') is not None:
            set_temporal_conv(self, switches['temporal_conv'])
        for name in ('hands_batch', 'target_logits', 'embed_once'):
            if switches.get(name) is not None:
                setattr(self, name, switches[name])
        if switches.get('compile_encoder'):
            for chain in {id(c): c for table in (self.gcn_modules, self.fusion_gcn_modules)
                          for c in table.values()}.values():
                chain.compile()

    def build_pose_encoder(self, channels, temporal_layers, temporal_kernel):
        # Modules are created for every part (left included, then replaced by right) so that a
        # given seed draws the same initial weights as Uni-Sign.
        self.proj_linear = nn.ModuleDict()
        adjacency = {}
        for part in PARTS:
            adjacency[part] = torch.tensor(Graph(part, strategy='distance', max_hop=1).A,
                                           dtype=torch.float32)
            self.proj_linear[part] = nn.Linear(3, channels[0])
        self.gcn_modules = nn.ModuleDict()
        self.fusion_gcn_modules = nn.ModuleDict()
        for part in PARTS:
            A = adjacency[part]
            self.gcn_modules[part], width = get_stgcn_chain(
                channels[0], 'spatial', (1, A.size(0)), A, True, channels=channels)
            self.fusion_gcn_modules[part], _ = get_stgcn_chain(
                width, 'temporal', (temporal_kernel, A.size(0)), A, True, channels=channels,
                temporal_layers=temporal_layers)
        for table in (self.gcn_modules, self.fusion_gcn_modules, self.proj_linear):
            table['left'] = table['right']
        self.hands_batch = SPEED_DEFAULTS['hands_batch']

    def encode_pose(self, src_input):
        """(B, T, 4*C) pose features: the four part features plus `part_para` (pose_proj input)."""
        return torch.cat(self.encode_parts(src_input), dim=-1) + self.part_para

    def encode_parts(self, src_input):
        """The four (B, T, C) part features, body, left, right, face, before `part_para`."""
        dtype, device = self.part_para.dtype, self.part_para.device
        x = {part: src_input[part].to(device=device, dtype=dtype) for part in PARTS}
        body = spatial_features(self, 'body', x['body'])
        features = {'body': temporal_features(self, 'body', body)}
        if hands_in_one_batch(self, body):
            groups = 1 if self.hands_batch == 'joint' else 2
            both = spatial_features(self, 'right', torch.cat([x['left'], x['right']]), groups)
            anchors = torch.cat([anchor_feature(body, 'left'), anchor_feature(body, 'right')])
            both = temporal_features(self, 'right', both + anchors, groups)
            features['left'], features['right'] = both.chunk(2)
        for part in PARTS[1:]:
            if part not in features:
                feat = spatial_features(self, part, x[part]) + anchor_feature(body, part)
                features[part] = temporal_features(self, part, feat)
        return [features[part] for part in PARTS]

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
        prefix_embeds = self.mt5_model.encoder.embed_tokens(prefix_ids)
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
        pose_embeds = self.project_pose(torch.cat(parts, dim=-1) + self.part_para)
        device = pose_embeds.device
        labels = self.target_labels(tgt_input, device)
        decoder_input_ids = self.mt5_model.prepare_decoder_input_ids_from_labels(labels=labels)
        prefix_ids, prefix_mask = self.prefix_tokens(src_input, len(pose_embeds), device)
        if self.embed_once == 'on':
            embedding = self.mt5_model.get_input_embeddings()
            tied = embedding.weight is self.mt5_model.get_output_embeddings().weight
            prefix_embeds, decoder_embeds = embed_together(embedding, prefix_ids,
                                                           decoder_input_ids, sparse_grad=tied)
        else:
            prefix_embeds, decoder_embeds = self.mt5_model.encoder.embed_tokens(prefix_ids), None
        inputs_embeds = torch.cat([prefix_embeds, pose_embeds], dim=1)
        attention_mask = torch.cat([prefix_mask, src_input['attention_mask'].to(device)], dim=1)
        mt5_out = self.run_mt5(inputs_embeds, attention_mask, decoder_input_ids, decoder_embeds,
                               labels)
        loss = F.cross_entropy(mt5_out['logits'], mt5_out['targets'], ignore_index=IGNORE_INDEX,
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
            encoder_states = self.mt5_model.encoder(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                return_dict=True).last_hidden_state
            decoder_states = self.mt5_model.decoder(
                input_ids=decoder_ids, inputs_embeds=decoder_embeds,
                encoder_hidden_states=encoder_states, encoder_attention_mask=attention_mask,
                use_cache=False, return_dict=True).last_hidden_state
            # The row count is data-dependent, so on a GPU this waits for it once per step:
            # far cheaper than the padded rows' products with the whole vocabulary.
            real = labels != IGNORE_INDEX
            logits, targets = self.mt5_model.lm_head(decoder_states[real]), labels[real]
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
        """mT5 encoder states (B, P+T, D) and their attention mask, as generate() computes them."""
        inputs_embeds, attention_mask = self.embed_inputs(src_input)
        states = self.mt5_model.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        return_dict=True).last_hidden_state
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


def sinusoidal_positions(length, dim):
    """(length, dim) sine/cosine position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[:dim // 2])
    return table


def spatial_features(encoder, part, x, groups=1):
    """(B, T, V, 3) keypoints -> (B, C, T, V) spatial features of `part`; with groups > 1 the
    batch holds `groups` parts sharing the modules, normalised apart."""
    chain = encoder.gcn_modules[part]
    with batch_groups(chain, groups):
        return chain(encoder.proj_linear[part](x).permute(0, 3, 1, 2))


def temporal_features(encoder, part, feat, groups=1):
    """(B, C, T, V) -> temporal chain -> mean over joints -> (B, T, C)."""
    chain = encoder.fusion_gcn_modules[part]
    with batch_groups(chain, groups):
        return chain(feat).mean(-1).transpose(1, 2)


def anchor_feature(body_feat, part):
    """The detached body feature (B, C, T, 1) at the joint `part` hangs from."""
    return body_feat[..., BODY_ANCHOR_JOINT[part]][..., None].detach()


def hands_in_one_batch(encoder, reference):
    mode = getattr(encoder, 'hands_batch', 'auto')
    return mode in ('on', 'joint') or (mode == 'auto' and reference.is_cuda)


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


def read_checkpoint(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        state = torch.load(source, map_location='cpu', weights_only=True)
    else:
        source, state = '<in-memory state dict>', path_or_state_dict
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if state and all(key.startswith('module.') for key in state):
        state = {key[len('module.'):]: value for key, value in state.items()}
    return source, dict(state)


def check_vocabulary(model, state, source):
    model_vocab = model.mt5_model.get_input_embeddings().weight.shape[0]
    for key in ('mt5_model.shared.weight', 'mt5_model.lm_head.weight'):
        if key in state and state[key].shape[0] != model_vocab:
            raise ValueError(f"checkpoint {source}: mT5 vocabulary size {state[key].shape[0]} "
                             f"({key}) differs from the model's {model_vocab}; load the same "
                             f"mt5_path the checkpoint was trained with")


def key_list(keys, limit=20):
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def load_encoder_weights(model, path_or_state_dict):
    """Loads only the pose encoder (ENCODER_PREFIXES keys, BatchNorm statistics included) from
    a checkpoint of any head: a CTC recognizer, a translator, pretraining or Uni-Sign. Every
    encoder key must be there with the model's shape; the rest is left as it is. Returns
    {'source', 'loaded_keys', 'skipped'} (skipped: counts of other keys by first name)."""
    source, state = read_checkpoint(path_or_state_dict)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    problems = [f"{k} {tuple(state[k].shape) if k in state else 'absent'} vs {tuple(v.shape)}"
                for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    if problems:
        raise RuntimeError(f"checkpoint {source} has no pose encoder of this shape: "
                           f"[{key_list(problems)}] (check --stgcn_channels, --hidden_dim, "
                           f"--temporal_layers)")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    skipped = Counter(k.split('.')[0] for k in state if k not in expected)
    return {'source': source, 'loaded_keys': len(expected), 'skipped': dict(skipped)}


def load_checkpoint_weights(model, path_or_state_dict):
    """Loads a Uni-Sign/Geo-Sign checkpoint ({'model': state_dict} or a bare state dict).

    RGB-branch keys and the weights of regularisers the model does not enable are dropped and
    reported; regularisers the checkpoint lacks keep their fresh weights; any other mismatch
    raises naming the source. Returns {'source', 'loaded_keys', 'dropped_rgb_keys',
    'dropped_regularizer_keys', 'fresh_regularizer_keys'}.
    """
    source, state = read_checkpoint(path_or_state_dict)
    expected = model.state_dict()
    dropped = sorted(key for key in state if key.startswith(RGB_KEY_PREFIXES))
    dropped_regularizer = sorted(key for key in state
                                 if key.startswith(REGULARIZER_PREFIX) and key not in expected)
    for key in dropped + dropped_regularizer:
        del state[key]
    check_vocabulary(model, state, source)
    fresh = sorted(key for key in expected if key.startswith(REGULARIZER_PREFIX) and key not in state)
    missing = set(expected) - set(state) - set(fresh)
    unexpected = set(state) - set(expected)
    wrong_shape = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                   for key in set(state) & set(expected) if state[key].shape != expected[key].shape]
    if missing or unexpected or wrong_shape:
        raise RuntimeError(
            f"checkpoint {source} does not match the model: "
            f"missing keys [{key_list(missing)}]; unexpected keys [{key_list(unexpected)}]; "
            f"shape mismatches [{key_list(wrong_shape)}]")
    model.load_state_dict(state, strict=not fresh)
    return {'source': source, 'loaded_keys': len(state), 'dropped_rgb_keys': dropped,
            'dropped_regularizer_keys': dropped_regularizer, 'fresh_regularizer_keys': fresh}
