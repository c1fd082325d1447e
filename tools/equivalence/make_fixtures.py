#!/usr/bin/env python
"""Write the metric networks' equivalence fixtures by running the AUTHORS' code on seeded weights.

    python tools/equivalence/make_fixtures.py NETWORK --checkout DIR [--commit SHA] [--out DIR]

NETWORK is one of ``dino``, ``raft``, ``amt``, ``vtss``, ``languagebind`` (the metric networks) or
``wan_forward``, ``self_forcing``, ``longlive``, ``memflow``, ``iamflow`` (the streaming methods, streaming_fixtures.py). ``--checkout`` is a local
checkout of the authors' repository at the pinned commit (:data:`PINS`; tools/equivalence/README.md
says how to get each). The tool imports the authors' modules from there -- nothing of theirs is in
this repository -- builds the network with a small configuration, fills its state dict with
:func:`seeded.weight` (a function of the seed, the key name and the shape only), runs seeded inputs and
writes ``tests/fixtures/equivalence/<name>.json`` (provenance, configuration, seeds, the authors' key
list) and ``<name>.npz`` (the float32 outputs, integer buffers). The tests rebuild the same state dict
from the key list, load it through narrastream's official-layout loaders and compare.

Shims live here, never in narrastream: each is commented where it is applied. None changes the
arithmetic of the network; they only select sizes, skip imports of unused modalities, or avoid
training-only machinery.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import seeded  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "equivalence"

#: network -> layouts: (name of the fixture, repository, pinned commit, path of the imported code)
PINS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "dino": {
        "official": ("dino_official", "Eddie0521/NarraStream-Bench", "3443e5272a733f6cc0ef874f717838c542dd742f",
                     "narrastream_bench/third_party/dino_vit.py"),
        "upstream": ("dino_upstream", "facebookresearch/dino", "7c446df5b9f45747937fb0d72314eb9f7b66930a",
                     "vision_transformer.py"),
    },
    "raft": {"upstream": ("raft", "princeton-vl/RAFT", "2888e15a51fa41140771d3f498ed8023cff098d1", "core/raft.py")},
    "amt": {"upstream": ("amt", "MCG-NKU/AMT", "70f988fbfc0d3d458beba1ee49caf876e57968fe", "networks/AMT-S.py")},
    "vtss": {"upstream": ("vtss", "RyanChenYN/IVEBench", "2dcf8900ee65197f43854c76f61c66a32bb8dbfc",
                          "metrics/quality/training_suitability_assessment/model.py")},
    "languagebind": {"upstream": ("languagebind", "PKU-YuanGroup/LanguageBind", "7070c53375661cdb235801176b564b45f96f0648",
                                  "languagebind/video/modeling_video.py")},
}


# ------------------------------------------------------------------------------------------ helpers
def _ensure_torchvision() -> None:
    """timm and the VTSS head import torchvision; on a CPU torch with a CUDA torchvision wheel its native
    ops cannot load. narrastream's import guard makes the import work (no native op is used)."""
    try:
        from narrastream._compat import ensure_torchvision
    except ImportError:
        return
    ensure_torchvision()


def _load_file(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _git_head(checkout: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _provenance(network: str, layout: str, checkout: Path, stated: str | None, allow_other: bool) -> dict[str, Any]:
    """Which code made the fixture. A git checkout must be at the pinned commit; a plain directory
    (e.g. an exported tree) must be vouched for with ``--commit``."""
    name, repo, pin, code = PINS[network][layout]
    if not (checkout / code).is_file():
        raise SystemExit(f"{checkout}: no {code}; expected a checkout of {repo} at {pin} (see tools/equivalence/README.md)")
    head = _git_head(checkout)
    commit, how = (head, "git rev-parse HEAD") if head else (stated, "stated with --commit")
    if commit is None:
        raise SystemExit(f"{checkout} is not a git checkout: pass --commit {pin} if it is that commit's tree")
    if commit != pin and not allow_other:
        raise SystemExit(f"{checkout} is at {commit}, the pinned commit is {pin} (--allow-other-commit to override)")
    return {"network": network, "fixture": name, "repository": repo, "commit": commit, "commit_source": how,
            "code": code, "torch": torch.__version__}


def _load_seeded(model: nn.Module, seed: int, gain: float = 1.0) -> tuple[list, dict, dict]:
    """Fill ``model`` with the seeded weights (strict); return ``(keys, int_buffers, aliases)``."""
    keys, ints, aliases = seeded.describe(model.state_dict())
    model.load_state_dict(seeded.state_dict(seed, keys, ints, aliases, gain), strict=True)
    return keys, ints, aliases


def _check_aliases(model: nn.Module, aliases: dict[str, str]) -> None:
    state = model.state_dict()
    for alias, source in aliases.items():
        if not torch.equal(state[alias], state[source]):
            raise SystemExit(f"alias {alias} -> {source} does not hold after loading")


# ----------------------------------------------------------------------------------------------- DINO
DINO_CONFIG = {"patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4, "qkv_bias": True,
               "layer_norm_eps": 1e-6, "img_size": 224}
#: name -> (batch, channels, height, width): square at the stored grid; non-square with a cropped remainder
#: (100 = 6 * 16 + 4 rows); square at another size (interpolated although square)
DINO_INPUTS = {"square224": (2, 3, 224, 224), "nonsquare": (2, 3, 100, 176), "square96": (1, 3, 96, 96)}


def make_dino(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    cfg = DINO_CONFIG
    if layout == "official":
        vit = _load_file("ns_bench_dino_vit", checkout / PINS["dino"]["official"][3])
        img_size: Any = cfg["img_size"]
    else:
        sys.path.insert(0, str(checkout))  # vision_transformer.py imports DINO's utils.py
        vit = _load_file("dino_vision_transformer", checkout / "vision_transformer.py")
        img_size = [cfg["img_size"]]  # upstream takes a list
    # vit_base's arguments (qkv bias, LayerNorm eps 1e-6, MLP ratio 4) with small widths; vit_base
    # itself fixes embed_dim/depth/num_heads, so the class is called directly
    model = vit.VisionTransformer(img_size=img_size, patch_size=cfg["patch_size"], num_classes=0, embed_dim=cfg["embed_dim"],
                                  depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                                  qkv_bias=cfg["qkv_bias"], norm_layer=partial(nn.LayerNorm, eps=cfg["layer_norm_eps"])).eval()
    keys, ints, aliases = _load_seeded(model, weights_seed)
    outputs: dict[str, np.ndarray] = {}
    checks: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, shape in DINO_INPUTS.items():
            x = torch.from_numpy(seeded.uniform(inputs_seed, f"dino/{name}", shape, -2.0, 2.0))
            checks[name] = seeded.checksum(x)
            tokens = model.prepare_tokens(x)
            for block in model.blocks:
                tokens = block(tokens)
            tokens = model.norm(tokens)
            outputs[f"cls/{name}"] = model(x).numpy()
            if name != "square224":  # 197 tokens x 2: keep only the CLS there (fixture size)
                outputs[f"tokens/{name}"] = tokens.numpy()
    meta = {"config": cfg, "inputs": {k: {"shape": v, "range": [-2.0, 2.0], "checksum": checks[k]} for k, v in DINO_INPUTS.items()},
            "keys": keys, "aliases": aliases}
    return meta, ints, outputs


# ----------------------------------------------------------------------------------------------- RAFT
RAFT_CONFIG = {"small": False, "mixed_precision": False, "alternate_corr": False, "dropout": 0.0, "iters": 3}
#: 128 px: the 4-level correlation pyramid over the 1/8 map (16x16) ends at 2x2; at 64 px its last
#: level is 1x1 and the original bilinear_sampler divides by W - 1 = 0 (NaN). The second pair is the
#: first one reversed (the metrics run both directions).
RAFT_INPUT = (1, 3, 128, 128)


def make_raft(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    sys.path.insert(0, str(checkout / "core"))  # the original code imports its siblings by bare name
    raft = _load_file("raft", checkout / "core" / "raft.py")
    cfg = RAFT_CONFIG
    args = argparse.Namespace(small=cfg["small"], mixed_precision=cfg["mixed_precision"],
                              alternate_corr=cfg["alternate_corr"], dropout=cfg["dropout"])
    model = raft.RAFT(args).eval()
    keys, ints, aliases = _load_seeded(model, weights_seed)
    _check_aliases(model, aliases)
    # integer-valued pixels in [0, 255], as decoded frames (RAFT normalises internally)
    images = [np.floor(seeded.uniform(inputs_seed, f"raft/image{i}", RAFT_INPUT, 0.0, 256.0)) for i in (1, 2)]
    first, second = (torch.from_numpy(np.concatenate([images[a], images[b]])) for a, b in ((0, 1), (1, 0)))
    with torch.no_grad():
        flows = model(first, second, iters=cfg["iters"], test_mode=False)
    outputs = {"flow/last": flows[-1].numpy()}  # (2, 2, 128, 128): pair (1 -> 2) and (2 -> 1)
    meta = {"config": cfg, "inputs": {f"image{i + 1}": {"shape": RAFT_INPUT, "range": [0.0, 256.0], "floor": True,
                                                      "checksum": seeded.checksum(images[i])} for i in (0, 1)},
            "keys": keys, "aliases": aliases}
    return meta, ints, outputs


# ------------------------------------------------------------------------------------------------ AMT
AMT_CONFIG = {"corr_radius": 3, "corr_lvls": 4, "num_flows": 3, "channels": [20, 32, 44, 56], "skip_channels": 20}
AMT_INPUT = (2, 3, 128, 128)  # 128 px: the 4-level pyramid over the 1/8 map reaches 2x2 (1x1 divides by 0)
AMT_EMBT = [0.5, 0.25]
#: with gain 1 most of the random network's output is clamped to 0 or 1 (nothing left to compare)
AMT_GAIN = 0.5


def make_amt(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    sys.path.insert(0, str(checkout))  # AMT-S.py imports networks.blocks.*
    amt = _load_file("amt_s", checkout / "networks" / "AMT-S.py")
    # AMT-S exactly (networks/AMT-S.py defaults; its update blocks hard-code 44/32/20 channels, so the
    # widths cannot be shrunk without editing their code); only the input is small
    model = amt.Model(**AMT_CONFIG).eval()
    keys, ints, aliases = _load_seeded(model, weights_seed, AMT_GAIN)
    # frames as the metric feeds them: uint8 values / 255
    images = [np.floor(seeded.uniform(inputs_seed, f"amt/img{i}", AMT_INPUT, 0.0, 256.0)) / np.float32(255.0) for i in (0, 1)]
    images = [np.asarray(x, dtype=np.float32) for x in images]
    embt = torch.tensor(AMT_EMBT, dtype=torch.float32).view(-1, 1, 1, 1)
    with torch.no_grad():
        out = model(torch.from_numpy(images[0]), torch.from_numpy(images[1]), embt, scale_factor=1.0, eval=True)["imgt_pred"]
    meta = {"config": AMT_CONFIG, "embt": AMT_EMBT, "scale_factor": 1.0, "weights_gain": AMT_GAIN,
            "inputs": {f"img{i}": {"shape": AMT_INPUT, "range": [0.0, 256.0], "floor": True, "divide": 255.0,
                                   "checksum": seeded.checksum(images[i])} for i in (0, 1)},
            "keys": keys, "aliases": aliases}
    return meta, ints, {"imgt_pred": out.numpy()}


# ----------------------------------------------------------------------------------------------- VTSS
#: swin_tiny_grpb with small widths; patch, window spatial size (7x7 = the 7x7 fragment grid), MLP ratio,
#: fragment biases in stages 1-3 are the real ones; 8 frames instead of 32 (window depth 2 instead of 8)
VTSS_BACKBONE = {"patch_size": [2, 4, 4], "embed_dim": 8, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4],
                 "window_size": [2, 7, 7], "frag_biases": [True, True, True, False], "base_x_size": [8, 224, 224]}
VTSS_HEAD = {"in_channels": 64, "hidden_channels": 8}
VTSS_INPUT = (2, 3, 8, 224, 224)  # normalised fragments (2 clips, 8 frames, 7x7 fragments of 32 px)


def make_vtss(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    _ensure_torchvision()
    sys.path.insert(0, str(checkout / "metrics" / "quality"))
    import training_suitability_assessment.model as tsa_model  # type: ignore[import-not-found]
    import training_suitability_assessment.swin_backbone as swin  # type: ignore[import-not-found]

    b = VTSS_BACKBONE
    # Shim: DiViDeAddEvaluator builds "swin_tiny_grpb" as ``VideoBackbone()`` with the full-size
    # defaults; here the same class gets small widths. use_checkpoint=False: activation checkpointing
    # is a training-memory device (same arithmetic) and recent torch warns or refuses it without grad.
    tsa_model.VideoBackbone = partial(swin.SwinTransformer3D, patch_size=tuple(b["patch_size"]), embed_dim=b["embed_dim"],
                                      depths=b["depths"], num_heads=b["num_heads"], window_size=tuple(b["window_size"]),
                                      frag_biases=b["frag_biases"], base_x_size=tuple(b["base_x_size"]), use_checkpoint=False)
    # the arguments of infer.yml (model.args), with the head narrowed to the small backbone's width
    model = tsa_model.DiViDeAddEvaluator(backbone_size="swin_tiny_grpb", backbone_preserve_keys="fragments",
                                         backbone={"fragments": {"checkpoint": False, "pretrained": None}},
                                         divide_head=False, vqa_head=VTSS_HEAD).eval()
    keys, ints, aliases = _load_seeded(model, weights_seed)
    x = torch.from_numpy(seeded.uniform(inputs_seed, "vtss/fragments", VTSS_INPUT, -2.0, 2.0))
    with torch.no_grad():
        maps = model({"fragments": x}, reduce_scores=False)  # the official call (vtss.py)
    model.eval()  # their inference path ends with self.train()
    meta = {"config": {"backbone_size": "swin_tiny_grpb", "backbone": b, "vqa_head": VTSS_HEAD},
            "inputs": {"fragments": {"shape": VTSS_INPUT, "range": [-2.0, 2.0], "checksum": seeded.checksum(x)}},
            "keys": keys, "aliases": aliases}
    return meta, ints, {"quality_map": maps[0].numpy()}


# --------------------------------------------------------------------------------------- LanguageBind
LB_TEXT = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
           "projection_dim": 16}
LB_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "projection_dim": 16,
             "add_time_attn": True, "num_frames": 8, "force_patch_dropout": 0.0, "lora_r": 0, "lora_alpha": 16,
             "lora_dropout": 0.0, "num_mel_bins": 0, "target_length": 0, "video_decode_backend": "decord"}
LB_VIDEO_INPUT = (2, 3, 8, 32, 32)  # (B, C, T, H, W), the layout their processor produces
#: ASCII prompts (no unicode: the tokenizer's text normalisation is not what is compared here)
LB_PROMPTS = ["a red fox runs across the snowy field",
              "In the library reading room, a woman closes her book and looks up.",
              "a cat"]


def _clip_tokenizer_files(checkout: Path, directory: Path) -> tuple[Path, Path, Any]:
    """vocab.json / merges.txt of the CLIP BPE, written from the BPE table shipped in the checkout.

    The hub's vocab.json is this table in Hugging Face's format: the 256 byte symbols, the same with
    ``</w>``, the 48894 merges, then ``<|startoftext|>`` / ``<|endoftext|>`` (ids 49406 / 49407).
    """
    simple = _load_file("lb_open_clip_tokenizer", checkout / "open_clip" / "tokenizer.py")
    tok = simple.SimpleTokenizer(str(checkout / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"))
    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {hf_names.get(token, token): index for token, index in tok.encoder.items()}
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file, tok


def make_languagebind(checkout: Path, layout: str, weights_seed: int, inputs_seed: int) -> tuple[dict, dict, dict]:
    # Shim: importing the ``languagebind`` package runs its __init__, which imports every modality
    # (audio needs torchaudio, ...). Only the video modules are needed: register an empty package.
    package = types.ModuleType("languagebind")
    package.__path__ = [str(checkout / "languagebind")]
    sys.modules["languagebind"] = package
    from languagebind.video.configuration_video import LanguageBindVideoConfig  # type: ignore[import-not-found]
    from languagebind.video.modeling_video import LanguageBindVideo  # type: ignore[import-not-found]
    from languagebind.video.tokenization_video import LanguageBindVideoTokenizer  # type: ignore[import-not-found]

    config = LanguageBindVideoConfig(text_config=dict(LB_TEXT), vision_config=dict(LB_VISION), projection_dim=16)
    config._attn_implementation = "eager"  # what the official loader forces (a no-op on transformers 4.30)
    model = LanguageBindVideo(config).eval()
    keys, ints, aliases = _load_seeded(model, weights_seed)

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file, simple = _clip_tokenizer_files(checkout, Path(tmp))
        tokenizer = LanguageBindVideoTokenizer(str(vocab_file), str(merges_file))
        # the official call (languagebind_encoder.py)
        tokens = tokenizer(LB_PROMPTS, max_length=77, padding="max_length", truncation=True, return_tensors="pt")
    # cross-check: the same ids as the open_clip BPE of the same checkout (before padding)
    for row, prompt in zip(tokens["input_ids"], LB_PROMPTS):
        expected = [49406, *simple.encode(prompt), 49407]
        if row[: len(expected)].tolist() != expected:
            raise SystemExit(f"tokenizer mismatch for {prompt!r}")
    pixels = torch.from_numpy(seeded.uniform(inputs_seed, "languagebind/pixels", LB_VIDEO_INPUT, -2.0, 2.0))
    with torch.no_grad():
        # the official LanguageBind wrapper: modality_encoder[k](**inputs)[1], then modality_proj[k]
        video = model.visual_projection(model.vision_model(pixel_values=pixels)[1])
        text = model.text_projection(model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])[1])
        text_hidden = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])[0]
    ints = dict(ints)
    ints["input/input_ids"] = tokens["input_ids"].numpy()
    ints["input/attention_mask"] = tokens["attention_mask"].numpy()
    meta = {"config": json.loads(config.to_json_string()), "transformers": _transformers_version(),
            "prompts_ascii": LB_PROMPTS,
            "inputs": {"pixels": {"shape": LB_VIDEO_INPUT, "layout": "b c t h w", "range": [-2.0, 2.0],
                                  "checksum": seeded.checksum(pixels)},
                       "tokens": {"int_buffers": ["input/input_ids", "input/attention_mask"], "max_length": 77,
                                  "padding": "max_length", "truncation": True}},
            "keys": keys, "aliases": aliases}
    return meta, ints, {"video_features": video.numpy(), "text_features": text.numpy(),
                        "text_last_hidden/0": text_hidden[0].numpy()}


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


MAKERS: dict[str, Callable[[Path, str, int, int], tuple[dict, dict, dict]]] = {
    "dino": make_dino, "raft": make_raft, "amt": make_amt, "vtss": make_vtss, "languagebind": make_languagebind,
}

# the streaming methods (causal Wan DiT, KV caches, switches, memory bank): streaming_fixtures.py
from streaming_fixtures import MAKERS as STREAM_MAKERS, STREAM_PINS  # noqa: E402

PINS.update(STREAM_PINS)
MAKERS.update(STREAM_MAKERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("network", choices=sorted(MAKERS))
    parser.add_argument("--checkout", type=Path, required=True, help="the authors' repository at the pinned commit")
    parser.add_argument("--layout", choices=sorted({layout for layouts in PINS.values() for layout in layouts}),
                        default="upstream",
                        help="dino: the evaluator's vendored file (official) or facebookresearch/dino (upstream); "
                             "memflow: sma runs their bank with SMA routing on; iamflow: upstream (soft prompt "
                             "transition), hard (no_transition) or bank (SMA over an injected memory bank); "
                             "longlive: lora (their LoRA on the generator); deep_forcing: ds (Deep Sink only)")
    parser.add_argument("--commit", help="the commit of a checkout that is not a git work tree (an exported tree)")
    parser.add_argument("--allow-other-commit", action="store_true", help="accept a checkout at another commit")
    parser.add_argument("--weights-seed", type=int, default=1234)
    parser.add_argument("--inputs-seed", type=int, default=5678)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.layout not in PINS[args.network]:
        parser.error(f"{args.network} has no {args.layout!r} layout; known: {sorted(PINS[args.network])}")
    checkout = args.checkout.resolve()
    meta = _provenance(args.network, args.layout, checkout, args.commit, args.allow_other_commit)
    torch.manual_seed(0)  # constructors draw random init weights that the seeded state dict replaces
    torch.set_num_threads(1)
    body, ints, outputs = MAKERS[args.network](checkout, args.layout, args.weights_seed, args.inputs_seed)
    meta.update(weights_seed=args.weights_seed, inputs_seed=args.inputs_seed, **body)
    for key, value in outputs.items():
        if not np.isfinite(value).all():
            raise SystemExit(f"{key}: non-finite output; not writing a fixture")
    json_path, npz_path = seeded.save_fixture(args.out, meta["fixture"], meta, ints, outputs)
    size = json_path.stat().st_size + npz_path.stat().st_size
    print(f"wrote {json_path} and {npz_path} ({size / 1024:.1f} KiB); outputs: "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
