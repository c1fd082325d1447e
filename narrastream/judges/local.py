"""Judges that run a model in this process with ``transformers``: a vision-language model
(:class:`LocalVLMJudge`) or a text-only chat model (:class:`LocalLLMJudge`, e.g. IAMFlow's entity
extractor); :func:`load_local_judge` picks by the checkpoint's config.

Backs ``narrastream serve-judge`` (one model loaded once, served to many evaluation shards) and lets
a machine with a GPU judge without any server. Any checkpoint that ``AutoProcessor`` and
``AutoModelForImageTextToText`` load and whose processor has a chat template works: Qwen2-VL,
Qwen2.5-VL and Qwen3-VL are the ones the protocol names. Decoding is greedy, so an answer depends only
on the model, the messages and ``max_tokens``.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from narrastream.judges.base import ImagePart, Judge, JudgeConfigError, Message

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXPECTED = ("a folder (or a Hugging Face hub id already in the local cache) with a chat-capable "
            "image-text-to-text checkpoint: config.json, model weights (*.safetensors), tokenizer and "
            "processor files with a chat template, e.g. a save_pretrained / snapshot of Qwen2.5-VL-7B-Instruct")
EXPECTED_ANY = ("a folder (or a Hugging Face hub id already in the local cache) with a chat model: a vision-language "
                "checkpoint (e.g. Qwen2.5-VL-7B-Instruct) or a text-only one (e.g. Qwen3-4B-Instruct-2507), with "
                "config.json, weights (*.safetensors) and a tokenizer with a chat template")
EXPECTED_LLM = ("a folder (or a Hugging Face hub id already in the local cache) with a causal language model and a "
                "tokenizer with a chat template, e.g. a snapshot of Qwen3-4B-Instruct-2507")


def _looks_like_path(model_path: str) -> bool:
    """A value meant as a folder (absolute, relative, home, or deeper than a hub ``owner/name`` id)."""
    return (model_path.startswith((".", "/", "~", "\\")) or model_path.count("/") > 1
            or "\\" in model_path or (len(model_path) > 1 and model_path[1] == ":"))


def resolve_device(device: str = "auto") -> str:
    """``auto``: the GPU when torch sees one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(torch.device(device))


def resolve_dtype(dtype: "str | torch.dtype", device: str) -> "torch.dtype":
    """``auto``: bfloat16 on a GPU (what the checkpoints ship in), float32 on the CPU (bf16 matmuls are slow there)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"judge dtype {dtype!r}: expected auto, bfloat16, float16 or float32")
    return value


class _LocalModelJudge(Judge):
    """What the local backends share: a folder or cached hub id, device and dtype, one request at a time."""

    backend = "local"

    def __init__(self, model_path: str, *, device: str = "auto", dtype: "str | torch.dtype" = "auto",
                 local_files_only: bool = True, trust_remote_code: bool = False, **judge_kwargs: Any) -> None:
        model_path = str(model_path)
        judge_kwargs.setdefault("model", model_path)
        super().__init__(**judge_kwargs)
        self.model_path = model_path
        _check_source(model_path)  # a missing folder fails fast, before torch is imported
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # CUDA torchvision wheels beside a CPU torch fail at import; transformers' model code imports torchvision
        from narrastream._compat import ensure_torchvision

        ensure_torchvision()
        self._load(model_path, local_files_only=local_files_only, trust_remote_code=trust_remote_code)
        # one model, many server threads: generation (and the Rust tokenizer) are not re-entrant
        self._lock = threading.Lock()
        log.info("judge %s loaded on %s (%s)", model_path, self.device, str(self.dtype).replace("torch.", ""))

    def _load(self, model_path: str, *, local_files_only: bool, trust_remote_code: bool) -> None:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "device": self.device, "dtype": str(self.dtype).replace("torch.", "")}

    def close(self) -> None:
        """Drop the model so its (GPU) memory can be reclaimed."""
        self.vlm = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


class LocalVLMJudge(_LocalModelJudge):
    """A ``transformers`` vision-language model as a judge (greedy decoding, one request at a time).

    ``model_path`` is a folder or a hub id resolved from the local Hugging Face cache (nothing is
    downloaded while ``local_files_only``). ``device`` and ``dtype`` accept ``auto``. Other keyword
    arguments go to :class:`Judge` (``model`` defaults to ``model_path``).
    """

    vision = True

    def _load(self, model_path: str, *, local_files_only: bool, trust_remote_code: bool) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor, self.vlm = _load(model_path, AutoProcessor, AutoModelForImageTextToText, "processor", EXPECTED,
                                         dtype=self.dtype, local_files_only=local_files_only,
                                         trust_remote_code=trust_remote_code)
        if not hasattr(self.processor, "tokenizer"):
            raise ValueError(f"judge model {model_path}: the processor has no tokenizer; expected {EXPECTED}")
        self.vlm = self.vlm.to(self.device).eval()

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        # json_mode is only a hint; the prompts ask for JSON and Judge.structured validates the answer
        import torch

        conversation = to_chat(messages)
        with self._lock:
            inputs = self.processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
            inputs = inputs.to(self.device, dtype=self.dtype)  # casts only floating tensors (pixel values)
            prompt_length = inputs["input_ids"].shape[1]
            with torch.inference_mode():
                output = self.vlm.generate(**inputs, do_sample=False, max_new_tokens=int(max_tokens))
            new_tokens = output[0, prompt_length:]
            return self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)


class LocalLLMJudge(_LocalModelJudge):
    """A text-only ``transformers`` chat model (``AutoModelForCausalLM``), e.g. Qwen3-4B-Instruct-2507, the
    entity extractor IAMFlow's release uses. Greedy decoding, thinking disabled in the chat template (as
    the release); it cannot take images."""

    vision = False

    def _load(self, model_path: str, *, local_files_only: bool, trust_remote_code: bool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer, model = _load(model_path, AutoTokenizer, AutoModelForCausalLM, "tokenizer", EXPECTED_LLM,
                                      dtype=self.dtype, local_files_only=local_files_only,
                                      trust_remote_code=trust_remote_code)
        self.vlm = model.to(self.device).eval()

    def _complete(self, messages: Sequence[Message], *, json_mode: bool, max_tokens: int) -> str:
        import torch

        if any(m.images() for m in messages):
            raise JudgeConfigError(f"judge model {self.model_path} is text-only: it cannot be asked about images")
        chat = [{"role": m.role, "content": m.text()} for m in messages]
        with self._lock:
            inputs = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True, return_tensors="pt", enable_thinking=False)
            inputs = inputs.to(self.device)
            prompt_length = inputs["input_ids"].shape[1]
            with torch.inference_mode():
                output = self.vlm.generate(**inputs, do_sample=False, max_new_tokens=int(max_tokens))
            return self.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


def load_local_judge(model_path: str, **kwargs: Any) -> _LocalModelJudge:
    """The local judge for a checkpoint: a vision-language model when its config has a vision part
    (Qwen2/2.5/3-VL), else a text-only chat model (Qwen3-4B-Instruct)."""
    source = _check_source(str(model_path))
    from transformers import AutoConfig

    local_only = bool(kwargs.get("local_files_only", True))
    where = "" if Path(source).is_dir() or not local_only else \
        " (not in the local Hugging Face cache; nothing is downloaded)"
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only,
                                            trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"judge model {model_path}: cannot read its config{where}: {exc}\n"
                         f"Expected {EXPECTED_ANY}") from exc
    vision = getattr(config, "vision_config", None) is not None
    return (LocalVLMJudge if vision else LocalLLMJudge)(str(model_path), **kwargs)


def to_chat(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the processor's chat-template format: content parts, images as decoded PIL images."""
    from PIL import Image, UnidentifiedImageError

    chat = []
    for i, message in enumerate(messages):
        content: list[dict[str, Any]] = []
        for j, part in enumerate(message.parts):
            if isinstance(part, ImagePart):
                try:
                    image = Image.open(io.BytesIO(part.jpeg))
                    image.load()
                except (UnidentifiedImageError, OSError) as exc:
                    raise ValueError(f"messages[{i}].parts[{j}]: not a decodable image ({exc})") from None
                content.append({"type": "image", "image": image.convert("RGB")})
            else:
                content.append({"type": "text", "text": str(part)})
        chat.append({"role": message.role, "content": content})
    return chat


def _check_source(model_path: str) -> str:
    """What to hand ``from_pretrained``: the folder, or the hub id; ValueError for a missing folder."""
    path = Path(model_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"judge model {model_path}: not a folder; expected {EXPECTED}")
        if not (path / "config.json").is_file():
            raise ValueError(f"judge model {model_path}: no config.json; expected {EXPECTED}")
        return str(path)
    if _looks_like_path(model_path):
        raise ValueError(f"judge model {model_path}: no such folder; expected {EXPECTED}")
    return model_path  # a hub id: resolved from the local cache


def _load(model_path: str, text_class: Any, model_class: Any, text_part: str, expected: str, *,
          dtype: "torch.dtype", local_files_only: bool, trust_remote_code: bool) -> tuple[Any, Any]:
    """``text_class`` (a processor or tokenizer, with a chat template) and ``model_class`` from a folder or a
    cached hub id, or a ValueError naming the path and what a checkpoint needs (``expected``)."""
    source = _check_source(model_path)
    where = "" if Path(source).is_dir() or not local_files_only else \
        " (not in the local Hugging Face cache; nothing is downloaded)"
    try:
        text = text_class.from_pretrained(source, local_files_only=local_files_only,
                                          trust_remote_code=trust_remote_code)
        model = model_class.from_pretrained(source, dtype=dtype, local_files_only=local_files_only,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"judge model {model_path}: cannot load{where}: {exc}\nExpected {expected}") from exc
    if not getattr(text, "chat_template", None):
        raise ValueError(f"judge model {model_path}: the {text_part} has no chat template; expected {expected}")
    return text, model
