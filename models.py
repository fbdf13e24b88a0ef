"""Pose-only sign language translator: four ST-GCN part encoders feeding an mT5 model.

Same computation and state-dict keys as Uni-Sign's pose-only model (so its checkpoints load):
each body part (x, y, score) is projected by `proj_linear`, encoded by a spatial chain
(`gcn_modules`), enriched with the detached body feature of its anchor joint, encoded by a
temporal chain (`fusion_gcn_modules`) and averaged over joints. The four part features are
concatenated, shifted by `part_para`, projected by `pose_proj` to mT5's width and prefixed
with the embedded prompt "Translate sign language video to {lang}: ".

The left hand reuses the right hand's modules; both names stay in the state dict.

With --use_signcl, --use_sst or --use_hyperbolic, `regularizers` holds the enabled auxiliary losses
(training_losses.py combines them with the cross-entropy); with none, it is an empty ModuleDict and
forward computes exactly Uni-Sign's loss. Their weights live under `regularizers.*`: checkpoints
without them load (the regularisers start fresh) and theirs load into a model without them.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

import regularizers
from stgcn_layers import Graph, get_stgcn_chain
from training_losses import RegularizerInputs, regularized_loss

PARTS = ('body', 'left', 'right', 'face_all')
# body joint whose spatial feature is added (detached) to each other part
BODY_ANCHOR_JOINT = {'left': -2, 'right': -1, 'face_all': 0}
RGB_KEY_PREFIXES = ('rgb_support_backbone.', 'rgb_proj.', 'fusion_pose_rgb_', 'fusion_gate.')
REGULARIZER_PREFIX = 'regularizers.'
IGNORE_INDEX = -100


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
        self.part_para = nn.Parameter(torch.zeros(hidden_dim * len(PARTS)))
        config = mt5_model.config if mt5_model is not None else MT5Config.from_pretrained(
            args.mt5_path)
        self.pose_proj = nn.Linear(hidden_dim * len(PARTS), config.d_model)
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

    def encode_pose(self, src_input):
        """(B, T, 4*C) pose features: the four part features plus `part_para` (pose_proj input)."""
        return torch.cat(self.encode_parts(src_input), dim=-1) + self.part_para

    def encode_parts(self, src_input):
        """The four (B, T, C) part features, body, left, right, face, before `part_para`."""
        dtype, device = self.part_para.dtype, self.part_para.device
        features, body_feat = [], None
        for part in PARTS:
            x = src_input[part].to(device=device, dtype=dtype)
            feat = self.gcn_modules[part](self.proj_linear[part](x).permute(0, 3, 1, 2))
            if part == 'body':
                body_feat = feat
            else:
                anchor = body_feat[..., BODY_ANCHOR_JOINT[part]]
                feat = feat + anchor[..., None].detach()
            feat = self.fusion_gcn_modules[part](feat)  # (B, C, T, V)
            features.append(feat.mean(-1).transpose(1, 2))
        return features

    def prompt_tokens(self, batch_size, device):
        tokens = self.mt5_tokenizer([self.prompt] * batch_size, padding='longest',
                                    truncation=True, return_tensors='pt')
        return tokens['input_ids'].to(device), tokens['attention_mask'].to(device)

    def embed_inputs(self, src_input, batch_size=None, pose_embeds=None):
        """mT5 encoder inputs: (prompt + pose embeddings (B, P+T, D), attention mask (B, P+T))."""
        if pose_embeds is None:
            pose_embeds = self.pose_proj(self.encode_pose(src_input))
        device = pose_embeds.device
        if 'prefix_ids' in src_input:
            prefix_ids = src_input['prefix_ids'].to(device)
            prefix_mask = src_input['prefix_mask'].to(device)
        else:
            prefix_ids, prefix_mask = self.prompt_tokens(batch_size or len(pose_embeds), device)
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
        pose_embeds = self.pose_proj(torch.cat(parts, dim=-1) + self.part_para)
        inputs_embeds, attention_mask = self.embed_inputs(src_input, pose_embeds=pose_embeds)
        labels = self.target_labels(tgt_input, inputs_embeds.device)
        # Teacher forcing with explicit decoder inputs: the same logits as passing `labels`,
        # without mT5 also computing its own (unsmoothed) loss.
        decoder_input_ids = self.mt5_model.prepare_decoder_input_ids_from_labels(labels=labels)
        mt5_out = self.mt5_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 decoder_input_ids=decoder_input_ids, use_cache=False,
                                 output_hidden_states=self.needs_decoder_states, return_dict=True)
        logits = mt5_out.logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        out = {'loss': loss, 'ce_loss': loss.detach(), 'inputs_embeds': inputs_embeds,
               'attention_mask': attention_mask, 'logits': logits}
        if len(self.regularizers):
            inputs = self.regularizer_inputs(src_input, parts, pose_embeds, labels, mt5_out)
            out.update(regularized_loss(self.regularizers, self.loss_weights, loss, inputs,
                                        self.progress))
        return out

    def regularizer_inputs(self, src_input, parts, pose_embeds, labels, mt5_out):
        """The features the enabled regularisers read (see training_losses.RegularizerInputs)."""
        encoder_states = mt5_out.encoder_last_hidden_state
        prompt_length = encoder_states.shape[1] - pose_embeds.shape[1]
        token_embeds = None
        if self.hyp_text_source == 'token':
            token_embeds = self.mt5_model.get_input_embeddings()(labels.clamp_min(0))
        return RegularizerInputs(
            frame_mask=src_input['attention_mask'].to(pose_embeds.device),
            text_mask=labels != IGNORE_INDEX, pose_embeds=pose_embeds, part_features=parts,
            pose_states=encoder_states[:, prompt_length:],
            decoder_states=mt5_out.decoder_hidden_states[-1] if self.needs_decoder_states else None,
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

    def generate_text(self, pre_compute_item, max_new_tokens=100, num_beams=4):
        ids = self.generate(pre_compute_item, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return self.mt5_tokenizer.batch_decode(ids, skip_special_tokens=True)


Uni_Sign = SignTranslator


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
