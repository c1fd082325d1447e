"""Tiny random-weight components of the same architectures (``preset=tiny``, tests, CPU demos).

Seeded, so two processes build bit-identical models: a scaled-down causal Wan DiT, a tiny umT5
encoder with a byte-level tokenizer built in code (no files, no download), and a tiny Wan VAE. The
videos they make are noise-like; they exercise every code path, never quality.
"""

from __future__ import annotations

import dataclasses

import torch

from narrastream.streaming.wan_model import CausalWanTransformer, WanConfig

TINY_TEXT_LEN = 256  # byte tokens: enough to reach where the benchmark prompts differ
TINY_Z_DIM = 16


def tiny_dit_config() -> WanConfig:
    return dataclasses.replace(WanConfig.tiny(), text_len=TINY_TEXT_LEN, in_dim=TINY_Z_DIM, out_dim=TINY_Z_DIM)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token (plus pad/eos/unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{ch: i + 3 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny(seed: int = 0, device: str | torch.device = "cpu"):
    """(dit, text_encoder, decoder) with seeded random weights."""
    from narrastream._compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from narrastream.streaming.text_encoder import UMT5TextEncoder
    from narrastream.streaming.vae import StreamingWanDecoder

    cfg = tiny_dit_config()
    torch.manual_seed(seed)
    dit = CausalWanTransformer(cfg).to(device).eval()
    tokenizer = byte_tokenizer()
    t5 = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=cfg.text_dim, d_kv=8, num_heads=2, d_ff=32, num_layers=1,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1)).to(device).eval()
    vae = AutoencoderKLWan(base_dim=4, z_dim=TINY_Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).to(device).eval()
    return dit, UMT5TextEncoder(t5, tokenizer, text_len=cfg.text_len), StreamingWanDecoder(vae)
