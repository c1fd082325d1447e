"""umT5-XXL text encoder of Wan2.1, through transformers' ``UMT5EncoderModel``.

Wan feeds the DiT a fixed ``[B, 512, 4096]`` context: every prompt is padded or truncated to 512 tokens
and the padded positions are zeroed after encoding (spec §2.1), so the DiT's text MLP maps them to one
constant vector. Two checkpoint layouts load into the same HF module:

* the Diffusers layout (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``text_encoder/`` + ``tokenizer/``;
* Wan's original ``models_t5_umt5-xxl-enc-bf16.pth`` (``wan/modules/t5.py`` naming), renamed key by key
  and loaded strictly, so a wrong or partial checkpoint fails loudly instead of leaving random weights.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from narrastream._compat import ensure_torchvision

ensure_torchvision()  # transformers' model modules import torchvision; see narrastream._compat

from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel  # noqa: E402

log = logging.getLogger(__name__)

TEXT_LEN = 512  # tokens per prompt fed to the DiT (Wan config text_len)

# umT5-XXL encoder as Wan instantiates it (wan/modules/t5.py::umt5_xxl): per-layer relative position
# bias (shared_pos=False), 32 bidirectional buckets up to distance 128, gated tanh-GELU FFN.
UMT5_XXL_ENCODER = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    num_heads=64,
    d_ff=10240,
    num_layers=24,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
)

# Per-block key renames: Wan original name -> HF UMT5 name (after "blocks.{i}." / "encoder.block.{i}.").
# Wan's FFN computes fc2(fc1(x) * gelu(gate(x))); HF computes wo(gelu(wi_0(x)) * wi_1(x)).
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
# The token embedding is shared (tied) between these two HF names.
_EMBED_HF_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_ORIGINAL_EMBED = "token_embedding.weight"
_ORIGINAL_FINAL_NORM = "norm.weight"
_HF_FINAL_NORM = "encoder.final_layer_norm.weight"
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointMappingError(KeyError):
    """A checkpoint's keys do not match the expected umT5 layout; the message lists every offending key."""

    def __str__(self) -> str:  # KeyError would repr() the message and escape its newlines
        return str(self.args[0]) if self.args else ""


def original_to_hf_key(key: str) -> str | None:
    """HF UMT5 name of one Wan-original key (the embedding maps to ``shared.weight``); None if unknown."""
    if key == _ORIGINAL_EMBED:
        return _EMBED_HF_KEYS[0]
    if key == _ORIGINAL_FINAL_NORM:
        return _HF_FINAL_NORM
    match = _BLOCK_RE.match(key)
    if match and match.group(2) in _BLOCK_KEYS:
        return f"encoder.block.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"
    return None


def hf_to_original_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse renaming (HF -> Wan original); used to write test checkpoints and to check round trips."""
    inverse = {f"encoder.block.{{i}}.{hf}": orig for orig, hf in _BLOCK_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _EMBED_HF_KEYS:
            out[_ORIGINAL_EMBED] = value
        elif key == _HF_FINAL_NORM:
            out[_ORIGINAL_FINAL_NORM] = value
        else:
            match = re.match(r"^encoder\.block\.(\d+)\.(.+)$", key)
            template = f"encoder.block.{{i}}.{match.group(2)}" if match else None
            if template not in inverse:
                raise CheckpointMappingError(f"no Wan-original name for HF key {key!r}")
            out[f"blocks.{match.group(1)}.{inverse[template]}"] = value
    return out


def original_to_hf_state_dict(
    state: Mapping[str, torch.Tensor], expected: Sequence[str], source: str = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Rename a Wan-original umT5 state dict to HF names, strictly.

    ``expected`` is the HF model's ``state_dict()`` key list. Any original key without a mapping, and any
    expected HF key the checkpoint does not provide, raises ``CheckpointMappingError`` naming them all.
    """
    renamed: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        hf_key = original_to_hf_key(key)
        if hf_key is None:
            unmapped.append(key)
            continue
        renamed[hf_key] = value
    if _EMBED_HF_KEYS[0] in renamed:
        renamed[_EMBED_HF_KEYS[1]] = renamed[_EMBED_HF_KEYS[0]]
    expected_set = set(expected)
    unexpected = sorted(k for k in renamed if k not in expected_set)
    missing = sorted(expected_set - renamed.keys())
    if unmapped or unexpected or missing:
        lines = [f"umT5 checkpoint {source} does not match the expected layout:"]
        if unmapped:
            lines.append(f"  keys with no HF mapping ({len(unmapped)}): {sorted(unmapped)}")
        if unexpected:
            lines.append(f"  mapped keys the model does not have ({len(unexpected)}): {unexpected}")
        if missing:
            lines.append(f"  model keys missing from the checkpoint ({len(missing)}): {missing}")
        raise CheckpointMappingError("\n".join(lines))
    return renamed


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'`` tokenizer preprocessing: fix mojibake, unescape HTML, collapse spaces."""
    import ftfy  # a dependency of open_clip_torch

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """Prompts -> ``[B, TEXT_LEN, d_model]`` umT5 context with padded positions exactly zero."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase, text_len: int = TEXT_LEN):
        if tokenizer.pad_token_id is None:
            raise ValueError("the umT5 tokenizer has no pad token; padding to a fixed length needs one")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both ``[B, text_len]`` (EOS appended, padded/truncated)."""
        if isinstance(prompts, str) or not prompts:
            raise TypeError("prompts must be a non-empty list of strings")
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Encode prompts to ``[B, text_len, d_model]`` in the model dtype, zero beyond each prompt's tokens."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)

    __call__ = encode

    @classmethod
    def from_diffusers_layout(
        cls, root: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
    ) -> UMT5TextEncoder:
        """Load ``root/text_encoder`` and ``root/tokenizer`` (Wan-AI/Wan2.1-T2V-1.3B-Diffusers layout)."""
        root = Path(root)
        enc_dir, tok_dir = root / "text_encoder", root / "tokenizer"
        for folder, what in ((enc_dir, "config.json"), (tok_dir, None)):
            if not folder.is_dir():
                raise FileNotFoundError(f"umT5 folder not found: {folder} (expected the Diffusers Wan layout)")
            if what and not (folder / what).is_file():
                raise FileNotFoundError(f"umT5 config not found: {folder / what}")
        log.info("loading umT5 encoder from %s", enc_dir)
        model = UMT5EncoderModel.from_pretrained(enc_dir, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        return cls(model, tokenizer)

    @classmethod
    def from_original(
        cls,
        pth_path: str | Path,
        tokenizer_path: str | Path,
        config: UMT5Config | None = None,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ) -> UMT5TextEncoder:
        """Load Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (default config: umT5-XXL encoder) strictly.

        ``tokenizer_path`` is a folder ``AutoTokenizer`` can read (e.g. a copy of ``google/umt5-xxl``).
        """
        pth_path, tokenizer_path = Path(pth_path), Path(tokenizer_path)
        if not pth_path.is_file():
            raise FileNotFoundError(f"umT5 checkpoint not found: {pth_path}")
        if not tokenizer_path.exists():
            raise FileNotFoundError(f"umT5 tokenizer not found: {tokenizer_path}")
        config = config if config is not None else UMT5Config(**UMT5_XXL_ENCODER)
        log.info("loading Wan-original umT5 checkpoint %s", pth_path)
        if pth_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(pth_path))
        else:
            state = torch.load(pth_path, map_location="cpu", weights_only=True, mmap=True)
        with torch.device("meta"):  # no 2x memory for the 5.7B-parameter XXL encoder
            model = UMT5EncoderModel(config)
        renamed = original_to_hf_state_dict(state, list(model.state_dict()), source=str(pth_path))
        renamed = {k: v.to(dtype) for k, v in renamed.items()}
        model.load_state_dict(renamed, strict=True, assign=True)
        model.tie_weights()
        model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        return cls(model, tokenizer)
