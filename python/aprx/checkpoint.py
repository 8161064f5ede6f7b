"""HF-format checkpoints (safetensors + config.json) and resumable training state. Never pickle.

* :func:`load_hf_checkpoint` reads ``config.json`` plus ``model.safetensors`` or a sharded
  ``model.safetensors.index.json`` into a :class:`~aprx.model.CausalLM`.
* :func:`save_hf_checkpoint` writes the same layout (``architectures: ["Qwen2ForCausalLM"]``),
  atomically: everything goes to a temporary sibling directory that is renamed into place.
* :func:`save_training_state` / :func:`load_training_state`: optimizer moments, RNG states
  (tensors in ``training_state.safetensors``) and step, data position, schedule and run
  settings (``training_state.json``).

Error codes: ``APRX-R430`` checkpoint files missing/unreadable, ``APRX-R431`` weights that do
not fit the config (missing, unexpected or mis-shaped tensors), ``APRX-R432`` bad training state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import AprxIOError, TrainingError
from .model import CausalLM, ModelConfig

__all__ = [
    "load_hf_checkpoint",
    "load_state_dict_files",
    "save_hf_checkpoint",
    "save_training_state",
    "load_training_state",
    "atomic_directory",
    "write_json_atomic",
]

PathLike = Union[str, "os.PathLike[str]"]
TRAINING_STATE_SCHEMA = "aprx.training_state/1"


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file in the same directory and ``os.replace``."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class atomic_directory:
    """``with atomic_directory(final) as tmp:`` fill ``tmp``; on success it becomes ``final``.

    An existing ``final`` is replaced (moved aside, then removed) only after ``tmp`` is
    complete; on error ``tmp`` is removed and ``final`` is untouched.
    """

    def __init__(self, final: PathLike) -> None:
        self.final = Path(final)
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- model weights ------------------------------------------------------------------------------


def _weight_files(path: Path) -> Iterable[Path]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise AprxIOError(f"{index}: unreadable shard index: {exc}", code="APRX-R430") from exc
        files = sorted(set(weight_map.values()))
        for f in files:
            if "/" in f or "\\" in f or not (path / f).is_file():
                raise AprxIOError(f"{index}: names missing weight file {f!r}", code="APRX-R430")
        return [path / f for f in files]
    if (path / "pytorch_model.bin").exists():
        raise AprxIOError(
            f"{path}: only pytorch_model.bin (pickle) found; aprx loads safetensors only "
            "(convert with transformers: save_pretrained(..., safe_serialization=True))",
            code="APRX-R430",
        )
    raise AprxIOError(
        f"{path}: no model.safetensors or model.safetensors.index.json", code="APRX-R430"
    )


def load_state_dict_files(path: PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (single or sharded safetensors), on CPU."""
    tensors: Dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
        except Exception as exc:  # safetensors raises its own error types
            raise AprxIOError(f"{f}: cannot read safetensors: {exc}", code="APRX-R430") from exc
    return tensors


def load_hf_checkpoint(
    path: PathLike,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """Build a :class:`CausalLM` from an HF Qwen2 checkpoint directory (weights cast to dtype)."""
    p = Path(path)
    cfg = ModelConfig.from_json_file(p / "config.json")
    tensors = load_state_dict_files(p)
    with torch.device("meta"):
        model = CausalLM(cfg)
    model = model.to_empty(device=device or "cpu").to(dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    load_weights(model, tensors, source=str(p))
    # non-persistent buffers were lost by the meta/to_empty dance: recompute them
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    model.model.rotary_emb.inv_freq = inv.to(model.model.embed_tokens.weight.device)
    return model


def load_weights(model: CausalLM, tensors: Dict[str, torch.Tensor], source: str = "") -> None:
    """Copy HF-named ``tensors`` into ``model``; strict about missing/unexpected/shapes."""
    cfg = model.config
    expected = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    tensors = dict(tensors)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.endswith("inv_freq"))
    if missing or unexpected:
        raise TrainingError(
            f"{source}: weights do not fit the config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}",
            code="APRX-R431",
        )
    with torch.no_grad():
        for name, param in expected.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(param.shape):
                raise TrainingError(
                    f"{source}: {name} has shape {tuple(t.shape)} but the config needs "
                    f"{tuple(param.shape)}",
                    code="APRX-R431",
                )
            param.copy_(t.to(device=param.device, dtype=param.dtype))


def model_state_for_saving(model: CausalLM, dtype: Optional[torch.dtype] = None):
    sd = {}
    for name, p in model.named_parameters():  # named_parameters dedups the tied head
        t = p.detach()
        if dtype is not None:
            t = t.to(dtype)
        sd[name] = t.contiguous().cpu()
    if not model.config.tie_word_embeddings and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = model.lm_head.weight.detach().contiguous().cpu()
    return sd


def save_hf_checkpoint(
    model: CausalLM,
    path: PathLike,
    *,
    dtype: Optional[torch.dtype] = None,
    extra_files: Optional[Mapping[str, PathLike]] = None,
    training_state: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None,
    state_dict: Optional[Dict[str, torch.Tensor]] = None,
) -> Path:
    """Save ``model`` as an HF directory (``model.safetensors`` + ``config.json``), atomically.

    ``extra_files`` maps destination names to files copied alongside (e.g. ``tokenizer.json``);
    ``training_state`` = ``(tensors, json_dict)`` is written as ``training_state.*`` in the same
    atomic step. ``state_dict`` (HF-named CPU tensors) replaces the model's own parameters,
    e.g. the full weights gathered from an FSDP-sharded model.
    """
    final = Path(path)
    with atomic_directory(final) as tmp:
        if state_dict is None:
            sd = model_state_for_saving(model, dtype)
        else:
            sd = {
                k: (v if dtype is None else v.to(dtype)).contiguous() for k, v in state_dict.items()
            }
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_hf_dict()
        saved_dtype = dtype or next(model.parameters()).dtype
        cfg["torch_dtype"] = str(saved_dtype).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        if training_state is not None:
            save_training_state(tmp, *training_state)
    return final


# -- training state -----------------------------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer, names: Dict[int, str]) -> Dict[str, Any]:
    tensors: Dict[str, torch.Tensor] = {}
    for p, st in opt.state.items():
        pname = names[id(p)]
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer/{pname}/{k}"] = v.detach().contiguous().cpu()
            else:
                tensors[f"optimizer/{pname}/{k}"] = torch.tensor(v)
    return tensors


def optimizer_state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer):
    """Optimizer state flattened to ``{"optimizer/<param>/<key>": tensor}``."""
    names = {id(p): n for n, p in model.named_parameters()}
    return _optimizer_tensors(opt, names)


def load_optimizer_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor]
) -> None:
    params = dict(model.named_parameters())
    # fused/capturable AdamW keeps `step` on the parameter's device, the default on the CPU
    step_on_device = {
        id(p): bool(g.get("fused") or g.get("capturable"))
        for g in opt.param_groups
        for p in g["params"]
    }
    state: Dict[torch.nn.Parameter, Dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith("optimizer/"):
            continue
        _, rest = key.split("/", 1)
        pname, sk = rest.rsplit("/", 1)
        if pname not in params:
            raise TrainingError(
                f"training state has optimizer state for unknown parameter {pname}",
                code="APRX-R432",
            )
        p = params[pname]
        if sk == "step":
            dev = p.device if step_on_device.get(id(p)) else torch.device("cpu")
            state.setdefault(p, {})[sk] = t.to(device=dev, dtype=torch.float32)
        else:
            state.setdefault(p, {})[sk] = t.to(device=p.device, dtype=p.dtype)
    opt.state.clear()
    for p, st in state.items():
        opt.state[p] = st


def rng_state_tensors() -> Dict[str, torch.Tensor]:
    out = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda_{i}"] = s
    return out


def restore_rng_state(tensors: Dict[str, torch.Tensor]) -> None:
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"].to(torch.uint8))
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_training_state(
    directory: PathLike, tensors: Dict[str, torch.Tensor], info: Dict[str, Any]
) -> None:
    d = Path(directory)
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()},
        str(d / "training_state.safetensors"),
        metadata={"schema": TRAINING_STATE_SCHEMA},
    )
    info = dict(info, schema=TRAINING_STATE_SCHEMA)
    (d / "training_state.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_training_state(directory: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    d = Path(directory)
    try:
        info = json.loads((d / "training_state.json").read_text(encoding="utf-8"))
        tensors: Dict[str, torch.Tensor] = {}
        with safe_open(str(d / "training_state.safetensors"), framework="pt", device="cpu") as st:
            for k in st.keys():
                tensors[k] = st.get_tensor(k)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{d}: unreadable training state: {exc}", code="APRX-R432") from exc
    except Exception as exc:
        raise TrainingError(f"{d}: unreadable training state: {exc}", code="APRX-R432") from exc
    if info.get("schema") != TRAINING_STATE_SCHEMA:
        raise TrainingError(
            f"{d}: training state schema {info.get('schema')!r} != {TRAINING_STATE_SCHEMA!r}",
            code="APRX-R432",
        )
    return tensors, info
