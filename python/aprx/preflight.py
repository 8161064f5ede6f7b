"""Preflight gates: tokenizer, shards and model must agree before a run allocates anything.

:func:`preflight` returns a :class:`PreflightReport` of gates, each with a stable ``id`` and
``code``, a status (``pass``, ``warn``, ``fail``, or ``skip`` when a gate does not apply or
could not run because an input was unreadable) and a one-line message naming both sides:

========================  ===========  ======================================================
gate id                   code         checks
========================  ===========  ======================================================
``tokenizer-files``       APRX-P310    the tokenizer directory is readable
``model-config``          APRX-P309    the model config (--init, --config file or preset)
``vocab-size``            APRX-P301    tokenizer ids vs embedding rows (== scratch, <= init)
``tokenizer-identity``    APRX-P302    tokenizer agrees with the --init checkpoint's own one
``shards-integrity``      APRX-P304    every shard complete and matching its manifest
``shards-tokenizer``      APRX-P303    shards were encoded with this tokenizer (sha256)
``max-token-id``          APRX-P305    every token id has an embedding row
``corpus-degenerate``     APRX-P306    not (nearly) all one or two ids, not mostly unknown
``enough-tokens``         APRX-P307    training and validation splits hold enough windows
``tokens-per-parameter``  APRX-P308    warn when far below compute-optimal (~20/param)
========================  ===========  ======================================================

:meth:`PreflightReport.raise_for_failures` raises :class:`~aprx.errors.PreflightError` listing
every failed gate. Nothing here imports torch. Also home of :class:`ModelConfig` and the model
presets, because reading an HF ``config.json`` must not need torch (``aprx.model`` re-exports
them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ._validate import is_int
from .errors import PreflightError

PathLike = Union[str, "os.PathLike[str]"]

# -- model configuration (torch-free) -----------------------------------------------------------

_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
)


@dataclass
class ModelConfig:
    """A Qwen2-architecture decoder's shape, read from / written to an HF ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # Qwen2 always has q/k/v biases
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        ):
            v = getattr(self, name)
            if not is_int(v, 1):
                raise PreflightError(
                    f"model config: {name} = {v!r} must be a positive integer", code="APRX-P309"
                )
        if self.hidden_size % self.num_attention_heads:
            raise PreflightError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}",
                code="APRX-P309",
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise PreflightError(
                f"model config: num_attention_heads {self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads {self.num_key_value_heads}",
                code="APRX-P309",
            )
        if self.head_dim % 2:
            raise PreflightError(
                f"model config: head_dim {self.head_dim} must be even for RoPE", code="APRX-P309"
            )

    @classmethod
    def from_hf_dict(cls, d: Dict[str, Any], source: str = "config") -> ModelConfig:
        """Build from a (Qwen2) HF config dict; unknown keys are kept in ``extra``."""
        if not isinstance(d, dict):
            raise PreflightError(f"{source}: not a JSON object", code="APRX-P309")
        model_type = d.get("model_type", "qwen2")
        if model_type not in ("qwen2",):
            raise PreflightError(
                f"{source}: model_type {model_type!r} is not supported (only 'qwen2')",
                code="APRX-P309",
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise PreflightError(f"{source}: hidden_act {act!r} unsupported", code="APRX-P309")
        if d.get("use_sliding_window"):
            raise PreflightError(f"{source}: use_sliding_window is unsupported", code="APRX-P309")
        rope = d.get("rope_scaling") or {}
        rope_params = d.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type")) or rope_params.get("rope_type")
        if rope_type not in (None, "default"):
            raise PreflightError(
                f"{source}: rope scaling {rope_type!r} is unsupported", code="APRX-P309"
            )
        missing = [
            k
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if k not in d
        ]
        if missing:
            raise PreflightError(f"{source}: missing {', '.join(missing)}", code="APRX-P309")
        kw: Dict[str, Any] = {k: d[k] for k in _CONFIG_KEYS if k in d and d[k] is not None}
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        if "rope_theta" not in kw and "rope_theta" in rope_params:
            kw["rope_theta"] = rope_params["rope_theta"]
        if "head_dim" in d and d["head_dim"] not in (
            None,
            d["hidden_size"] // d["num_attention_heads"],
        ):
            raise PreflightError(
                f"{source}: a head_dim other than hidden/heads is unsupported", code="APRX-P309"
            )
        for k in ("bos_token_id", "eos_token_id"):
            if isinstance(kw.get(k), list):
                kw[k] = kw[k][0] if kw[k] else None
        kw["rope_theta"] = float(kw.get("rope_theta", 10000.0))
        kw["rms_norm_eps"] = float(kw.get("rms_norm_eps", 1e-6))
        kw["tie_word_embeddings"] = bool(kw.get("tie_word_embeddings", False))
        known = set(_CONFIG_KEYS) | {"rope_parameters", "model_type", "architectures", "head_dim"}
        kw["extra"] = {k: v for k, v in d.items() if k not in known}
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: PathLike) -> ModelConfig:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        d = _read_json(p, "model config", "APRX-P309")
        return cls.from_hf_dict(d, source=str(p))

    def to_hf_dict(self) -> Dict[str, Any]:
        """An HF ``config.json`` dict that ``transformers.Qwen2ForCausalLM`` loads."""
        d: Dict[str, Any] = {}
        for k, v in self.extra.items():
            if k not in ("transformers_version", "torch_dtype", "dtype", "rope_scaling"):
                d[k] = v
        d.update(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_act": "silu",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "max_position_embeddings": self.max_position_embeddings,
                "rope_theta": self.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
                "rope_scaling": None,
                "rms_norm_eps": self.rms_norm_eps,
                "tie_word_embeddings": self.tie_word_embeddings,
                "initializer_range": self.initializer_range,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "use_sliding_window": False,
                "sliding_window": None,
                "max_window_layers": self.num_hidden_layers,
                "attention_dropout": 0.0,
                "use_cache": True,
                "torch_dtype": "float32",
            }
        )
        return d

    def replace(self, **changes: Any) -> ModelConfig:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["extra"] = dict(self.extra)
        kw.update(changes)
        return ModelConfig(**kw)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of the model this config builds (tied weights counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        bias = (h + 2 * kv) if self.attention_bias else 0
        per_layer = h * h + 2 * h * kv + bias + h * h + 3 * h * i + 2 * h
        n = self.num_hidden_layers * per_layer + h
        if include_embeddings:
            n += v * h if self.tie_word_embeddings else 2 * v * h
        return n


PRESETS: Dict[str, Dict[str, Any]] = {
    # test-sized: builds in milliseconds on CPU
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    # Qwen/Qwen2.5-0.5B's shape (its tokenizer has 151665 entries for 151936 rows)
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    # ~370M parameters (untied) for a GPT-2-sized (50257) tokenizer, trained from scratch
    "scratch-370m": dict(
        vocab_size=50257,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
}


def preset_config(name: str) -> ModelConfig:
    try:
        return ModelConfig(**PRESETS[name])
    except KeyError:
        raise PreflightError(
            f"unknown model preset {name!r} (known: {', '.join(PRESETS)})", code="APRX-P309"
        ) from None


def resolve_model_config(
    init: Optional[PathLike] = None, config: Optional[PathLike] = None
) -> ModelConfig:
    """The model config from ``--init DIR`` (its config.json) or ``--config FILE_OR_PRESET``."""
    if (init is None) == (config is None):
        raise PreflightError(
            "give exactly one of init (an HF checkpoint directory) or config "
            f"(a config.json or one of the presets {', '.join(PRESETS)})",
            code="APRX-P309",
        )
    if init is not None:
        p = Path(init)
        if not (p / "config.json").is_file():
            raise PreflightError(f"{p}: --init directory has no config.json", code="APRX-P309")
        return ModelConfig.from_json_file(p / "config.json")
    assert config is not None
    if str(config) in PRESETS:
        return preset_config(str(config))
    p = Path(config)
    if p.exists():
        return ModelConfig.from_json_file(p)
    raise PreflightError(
        f"--config {config!r} is neither a file nor a preset ({', '.join(PRESETS)})",
        code="APRX-P309",
    )


# -- tokenizer files ----------------------------------------------------------------------------


@dataclass
class TokenizerFiles:
    """What preflight needs from a tokenizer: its id -> token map, merges, unk, identity."""

    path: str
    id_to_token: Dict[int, str]
    merges: Optional[List[str]]
    unk_id: Optional[int]
    effective_vocab_size: int
    sha256: Optional[str] = None
    manifest: Dict[str, Any] = field(default_factory=dict, repr=False)


def _read_json(path: Path, what: str, code: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError: invalid UTF-8, invalid JSON, or a number of more than 4300 digits;
        # RecursionError: JSON nested too deep to parse.
        raise PreflightError(f"{path}: cannot read {what}: {exc}", code=code) from exc


def _read_merges_txt(path: Path, code: str) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PreflightError(f"{path}: cannot read merges: {exc}", code=code) from exc
    out = []
    for line in text.splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        out.append(line)
    return out


def _vocab_ids(path: Path, vocab: Any, code: str) -> Dict[int, str]:
    """``{token: id}`` (a vocab.json or a tokenizer.json model vocab) -> ``{id: token}``."""
    if not isinstance(vocab, dict):
        raise PreflightError(f"{path}: the vocab is not a JSON object", code=code)
    out: Dict[int, str] = {}
    for t, i in vocab.items():
        if not is_int(i, 0):
            raise PreflightError(
                f"{path}: vocab entry {t!r} has id {i!r}, not a non-negative integer", code=code
            )
        out[i] = t
    return out


def _added_ids(path: Path, added: Any, where: str, code: str) -> Dict[int, str]:
    """A list of ``{"id": int, "content": str}`` objects (``added_tokens``) -> ``{id: token}``."""
    if added is None:
        return {}
    if not isinstance(added, list):
        raise PreflightError(f"{path}: {where} is not a list", code=code)
    out: Dict[int, str] = {}
    for k, tok in enumerate(added):
        if not isinstance(tok, dict):
            raise PreflightError(f"{path}: {where}[{k}] is not an object", code=code)
        i, content = tok.get("id"), tok.get("content")
        if "id" not in tok:
            raise PreflightError(f"{path}: {where}[{k}] has no 'id'", code=code)
        if not is_int(i, 0):
            raise PreflightError(
                f"{path}: {where}[{k}].id is {i!r}, not a non-negative integer", code=code
            )
        if not isinstance(content, str):
            raise PreflightError(
                f"{path}: {where}[{k}].content is {content!r}, not a string", code=code
            )
        out[i] = content
    return out


def _norm_merges(merges: Any) -> List[str]:
    return [" ".join(m) if isinstance(m, (list, tuple)) else str(m) for m in merges]


def _unk_from_tokenizer_json(
    path: Path, tj: Any, token_to_id: Dict[str, int], code: str
) -> Optional[int]:
    if not isinstance(tj, dict):
        raise PreflightError(f"{path}: not a JSON object", code=code)
    model = tj.get("model")
    if model is None:
        return None
    if not isinstance(model, dict):
        raise PreflightError(f"{path}: model is {model!r}, not an object", code=code)
    unk = model.get("unk_token")
    if unk is None:
        return None
    if not isinstance(unk, str):
        raise PreflightError(f"{path}: model.unk_token is {unk!r}, not a string", code=code)
    return token_to_id.get(unk)


def read_aprx_tokenizer(path: PathLike) -> TokenizerFiles:
    """Read an ``aprx tokenize import-hf`` directory (JSON only; no native module needed)."""
    p = Path(path)
    manifest = _read_json(p / "manifest.json", "tokenizer manifest", "APRX-P310")
    if not isinstance(manifest, dict) or manifest.get("schema") != "aprx.tokenizer/1":
        raise PreflightError(
            f"{p / 'manifest.json'}: schema "
            f"{manifest.get('schema') if isinstance(manifest, dict) else None!r}"
            " is not 'aprx.tokenizer/1'",
            code="APRX-P310",
        )
    mpath = p / "manifest.json"

    def bad(msg: str) -> PreflightError:
        return PreflightError(f"{mpath}: {msg}", code="APRX-P310")

    id_to_token = _vocab_ids(
        p / "vocab.json", _read_json(p / "vocab.json", "vocab", "APRX-P310"), "APRX-P310"
    )
    include = manifest.get("include_added_tokens", True)
    if not isinstance(include, bool):
        raise bad(f"include_added_tokens is {include!r}, not true or false")
    added = _added_ids(mpath, manifest.get("added_tokens"), "added_tokens", "APRX-P310")
    if include:
        id_to_token.update(added)
    merges = (
        _read_merges_txt(p / "merges.txt", "APRX-P310") if (p / "merges.txt").is_file() else None
    )
    unk_id = manifest.get("unk_id")
    if unk_id is not None and not is_int(unk_id, 0):
        raise bad(f"unk_id is {unk_id!r}, not a non-negative integer")
    if unk_id is None and (p / "tokenizer.json").is_file():
        tj = _read_json(p / "tokenizer.json", "tokenizer.json", "APRX-P310")
        token_to_id = {t: i for i, t in id_to_token.items()}
        unk_id = _unk_from_tokenizer_json(p / "tokenizer.json", tj, token_to_id, "APRX-P310")
    computed = 1 + max(id_to_token) if id_to_token else 0
    eff = manifest.get("effective_vocab_size", computed)
    if not is_int(eff, 0):
        raise bad(f"effective_vocab_size is {eff!r}, not a non-negative integer")
    sha = manifest.get("tokenizer_sha256")
    if sha is not None and not isinstance(sha, str):
        raise bad(f"tokenizer_sha256 is {sha!r}, not a string")
    return TokenizerFiles(
        path=str(p),
        id_to_token=id_to_token,
        merges=merges,
        unk_id=unk_id,
        effective_vocab_size=eff,
        sha256=sha,
        manifest=manifest,
    )


def read_hf_tokenizer(path: PathLike) -> Optional[TokenizerFiles]:
    """The tokenizer an HF checkpoint directory ships (tokenizer.json or vocab.json+merges.txt),
    or ``None`` when it has none."""
    p = Path(path)
    id_to_token: Dict[int, str] = {}
    merges: Optional[List[str]] = None
    unk_id = None
    if (p / "tokenizer.json").is_file():
        tj_path = p / "tokenizer.json"
        tj = _read_json(tj_path, "tokenizer.json", "APRX-P302")
        model = tj.get("model") if isinstance(tj, dict) else None
        model = model if isinstance(model, dict) else {}
        if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise PreflightError(
                f"{tj_path}: model type {model.get('type')!r} is not a BPE vocab",
                code="APRX-P302",
            )
        id_to_token = _vocab_ids(tj_path, model["vocab"], "APRX-P302")
        raw_merges = model.get("merges") or []
        if not isinstance(raw_merges, list):
            raise PreflightError(f"{tj_path}: model.merges is not a list", code="APRX-P302")
        merges = _norm_merges(raw_merges)
        id_to_token.update(_added_ids(tj_path, tj.get("added_tokens"), "added_tokens", "APRX-P302"))
        unk_id = _unk_from_tokenizer_json(
            tj_path, tj, {t: i for i, t in id_to_token.items()}, "APRX-P302"
        )
    elif (p / "vocab.json").is_file():
        id_to_token = _vocab_ids(
            p / "vocab.json",
            _read_json(p / "vocab.json", "vocab.json", "APRX-P302"),
            "APRX-P302",
        )
        if (p / "merges.txt").is_file():
            merges = _read_merges_txt(p / "merges.txt", "APRX-P302")
        if (p / "added_tokens.json").is_file():
            # {token: id}, the same shape as vocab.json
            id_to_token.update(
                _vocab_ids(
                    p / "added_tokens.json",
                    _read_json(p / "added_tokens.json", "added_tokens.json", "APRX-P302"),
                    "APRX-P302",
                )
            )
        if (p / "tokenizer_config.json").is_file():
            tc_path = p / "tokenizer_config.json"
            tc = _read_json(tc_path, "tokenizer_config.json", "APRX-P302")
            decoder = tc.get("added_tokens_decoder") if isinstance(tc, dict) else None
            if decoder is not None and not isinstance(decoder, dict):
                raise PreflightError(
                    f"{tc_path}: added_tokens_decoder is not an object", code="APRX-P302"
                )
            for i, tok in (decoder or {}).items():
                content = tok.get("content") if isinstance(tok, dict) else None
                if not (i.isascii() and i.isdigit()) or not isinstance(content, str):
                    raise PreflightError(
                        f"{tc_path}: added_tokens_decoder[{i!r}] is not an id with a string "
                        "content",
                        code="APRX-P302",
                    )
                id_to_token[int(i)] = content
    else:
        return None
    return TokenizerFiles(
        path=str(p),
        id_to_token=id_to_token,
        merges=merges,
        unk_id=unk_id,
        effective_vocab_size=1 + max(id_to_token) if id_to_token else 0,
    )


def format_count(n: float) -> str:
    """``494032768`` -> ``"494.0M"``; small counts stay exact."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(int(n))


# -- the report ---------------------------------------------------------------------------------

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"

GATE_CODES: Dict[str, str] = {
    "tokenizer-files": "APRX-P310",
    "model-config": "APRX-P309",
    "vocab-size": "APRX-P301",
    "tokenizer-identity": "APRX-P302",
    "shards-integrity": "APRX-P304",
    "shards-tokenizer": "APRX-P303",
    "max-token-id": "APRX-P305",
    "corpus-degenerate": "APRX-P306",
    "enough-tokens": "APRX-P307",
    "tokens-per-parameter": "APRX-P308",
}


@dataclass
class Gate:
    id: str
    status: str
    message: str
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> str:
        return GATE_CODES[self.id]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "details": self.details,
        }

    def line(self) -> str:
        return f"{self.status.upper():4} {self.id} [{self.code}] {self.message}"


@dataclass
class PreflightReport:
    gates: List[Gate]
    summary: Dict[str, Any] = field(default_factory=dict)
    # Objects the training loop reuses (not serialised).
    model_config: Optional[ModelConfig] = field(default=None, repr=False)
    dataset: Any = field(default=None, repr=False)
    split: Any = field(default=None, repr=False)
    tokenizer: Optional[TokenizerFiles] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> List[Gate]:
        return [g for g in self.gates if g.status == FAIL]

    @property
    def warnings(self) -> List[Gate]:
        return [g for g in self.gates if g.status == WARN]

    def gate(self, gate_id: str) -> Gate:
        for g in self.gates:
            if g.id == gate_id:
                return g
        raise KeyError(gate_id)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": "aprx.preflight/1",
            "ok": self.ok,
            "failures": [g.id for g in self.failures],
            "warnings": [g.id for g in self.warnings],
            "gates": [g.to_dict() for g in self.gates],
            "summary": self.summary,
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format_text(self) -> str:
        lines = [g.line() for g in self.gates]
        n_fail, n_warn = len(self.failures), len(self.warnings)
        verdict = "preflight passed" if self.ok else "preflight FAILED"
        lines.append(f"{verdict}: {n_fail} failed, {n_warn} warning(s), {len(self.gates)} gates")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`PreflightError` listing every failed gate (code of the first one)."""
        fails = self.failures
        if fails:
            listing = "; ".join(f"{g.id} [{g.code}]: {g.message}" for g in fails)
            raise PreflightError(
                f"{len(fails)} preflight gate(s) failed: {listing}", code=fails[0].code
            )


# -- the gates ----------------------------------------------------------------------------------


def _tok_repr(tok: TokenizerFiles, i: int) -> str:
    t = tok.id_to_token.get(i)
    return f"{i} ({t!r})" if t is not None else str(i)


def _gate_vocab(tok: TokenizerFiles, cfg: ModelConfig, from_init: bool) -> Gate:
    t, m = tok.effective_vocab_size, cfg.vocab_size
    details = {"tokenizer_vocab": t, "model_vocab": m, "mode": "init" if from_init else "scratch"}
    if from_init:
        if t <= m:
            extra = f" ({m - t} spare rows)" if t < m else ""
            return Gate(
                "vocab-size",
                PASS,
                f"tokenizer has {t} ids <= the --init model's {m} embedding rows{extra}",
                details,
            )
        return Gate(
            "vocab-size",
            FAIL,
            f"tokenizer has {t} ids but the --init model has only {m} embedding rows: ids "
            f">= {m} would index past the embedding matrix",
            details,
        )
    if t == m:
        return Gate("vocab-size", PASS, f"tokenizer has {t} ids == model vocab_size {m}", details)
    hint = (
        "rows no id can reach would be trained as dead weight"
        if t < m
        else f"ids >= {m} would index past the embedding matrix"
    )
    return Gate(
        "vocab-size",
        FAIL,
        f"tokenizer has {t} ids but the from-scratch model config has vocab_size {m} "
        f"(must be equal: {hint}; set vocab_size {t} in the config)",
        details,
    )


def _gate_identity(tok: TokenizerFiles, init: Optional[PathLike]) -> Gate:
    if init is None:
        return Gate("tokenizer-identity", SKIP, "training from scratch: no checkpoint tokenizer")
    try:
        ref = read_hf_tokenizer(init)
    except PreflightError as exc:
        return Gate("tokenizer-identity", FAIL, f"--init {init}: {exc.message}")
    if ref is None:
        return Gate(
            "tokenizer-identity",
            WARN,
            f"--init {init} has no tokenizer.json or vocab.json+merges.txt: cannot check that "
            f"tokenizer {tok.path} is the one the checkpoint was trained with",
        )
    common = tok.id_to_token.keys() & ref.id_to_token.keys()
    diff = sorted(i for i in common if tok.id_to_token[i] != ref.id_to_token[i])
    only_tok = sorted(tok.id_to_token.keys() - ref.id_to_token.keys())
    details: Dict[str, Any] = {
        "tokenizer_ids": len(tok.id_to_token),
        "checkpoint_ids": len(ref.id_to_token),
        "differing_ids": len(diff),
        "ids_missing_from_checkpoint": len(only_tok),
        "checkpoint_tokenizer": ref.path,
    }
    if diff:
        ex = ", ".join(
            f"id {i}: {tok.id_to_token[i]!r} vs {ref.id_to_token[i]!r}" for i in diff[:3]
        )
        return Gate(
            "tokenizer-identity",
            FAIL,
            f"tokenizer {tok.path} and the --init checkpoint's tokenizer {ref.path} disagree on "
            f"{len(diff)} of {len(common)} shared ids (e.g. {ex}): the checkpoint's embeddings "
            "mean other tokens",
            details,
        )
    if tok.merges is not None and ref.merges is not None and tok.merges != ref.merges:
        n = next(
            (k for k, (a, b) in enumerate(zip(tok.merges, ref.merges, strict=False)) if a != b),
            min(len(tok.merges), len(ref.merges)),
        )
        details["first_differing_merge"] = n
        return Gate(
            "tokenizer-identity",
            FAIL,
            f"tokenizer {tok.path} has the checkpoint's ids but different merges from "
            f"{ref.path} ({len(tok.merges)} vs {len(ref.merges)} rules, first difference at "
            f"rule {n}): texts would be split differently than in pretraining",
            details,
        )
    if only_tok:
        return Gate(
            "tokenizer-identity",
            WARN,
            f"tokenizer {tok.path} matches {ref.path} on all {len(common)} shared ids but adds "
            f"{len(only_tok)} ids the checkpoint's tokenizer lacks (e.g. "
            f"{_tok_repr(tok, only_tok[0])}): their embedding rows are untrained",
            details,
        )
    return Gate(
        "tokenizer-identity",
        PASS,
        f"tokenizer {tok.path} matches the --init checkpoint's tokenizer {ref.path} on all "
        f"{len(common)} ids" + (" and merges" if tok.merges and ref.merges else ""),
        details,
    )


def _gate_shards_tokenizer(tok: TokenizerFiles, ds: Any) -> Gate:
    shard_sha = ds.tokenizer_sha256
    details = {"shards_sha256": shard_sha, "tokenizer_sha256": tok.sha256}
    if not shard_sha or not tok.sha256:
        return Gate(
            "shards-tokenizer",
            FAIL,
            f"cannot tell which tokenizer encoded {ds.path}: shard manifest tokenizer.sha256 "
            f"{shard_sha!r}, tokenizer manifest tokenizer_sha256 {tok.sha256!r}",
            details,
        )
    if shard_sha.lower() != tok.sha256.lower():
        where = (ds.manifest.get("tokenizer") or {}).get("path") or "another tokenizer"
        return Gate(
            "shards-tokenizer",
            FAIL,
            f"shards {ds.path} were encoded with tokenizer sha256 {shard_sha[:16]}... ({where}) "
            f"but {tok.path} is {tok.sha256[:16]}...: re-encode the corpus with this tokenizer",
            details,
        )
    return Gate(
        "shards-tokenizer",
        PASS,
        f"shards {ds.path} were encoded with tokenizer {tok.path} (sha256 {tok.sha256[:16]}...)",
        details,
    )


def _gate_max_id(ds: Any, cfg: Optional[ModelConfig], tok: Optional[TokenizerFiles], scan: bool):
    declared = ds.max_token_id
    actual = ds.scan_max_token_id() if scan else None
    sample_max = int(ds.sample().max()) if len(ds) else -1
    details = {"manifest_max_token_id": declared, "scanned_max_token_id": actual, "scanned": scan}
    if declared is not None and max(actual or -1, sample_max) > declared:
        return Gate(
            "max-token-id",
            FAIL,
            f"shards {ds.path} contain id {max(actual or -1, sample_max)} but their manifest "
            f"says max_token_id {declared}",
            details,
        )
    m = actual if actual is not None else declared if declared is not None else sample_max
    eos = ds.eos_id
    if cfg is None:
        return Gate("max-token-id", SKIP, "no model config to compare token ids with", details)
    v = cfg.vocab_size
    if m >= v:
        return Gate(
            "max-token-id",
            FAIL,
            f"shards {ds.path} contain token id {m} but the model has only {v} embedding rows "
            f"(ids must be < {v})",
            details,
        )
    if eos is not None and eos >= v:
        return Gate(
            "max-token-id",
            FAIL,
            f"shards' eos_id {eos} >= the model's vocab_size {v}",
            details,
        )
    if tok is not None and m >= tok.effective_vocab_size:
        return Gate(
            "max-token-id",
            WARN,
            f"shards {ds.path} contain id {m}, which tokenizer {tok.path} "
            f"({tok.effective_vocab_size} ids) cannot produce",
            details,
        )
    return Gate(
        "max-token-id",
        PASS,
        f"largest token id in {ds.path} is {m} < model vocab_size {v}"
        + ("" if scan else " (from the manifest)"),
        details,
    )


def _gate_degenerate(ds: Any, tok: Optional[TokenizerFiles]) -> Gate:
    import numpy as np

    sample = np.asarray(ds.sample(), dtype=np.int64)
    if sample.size == 0:
        return Gate("corpus-degenerate", FAIL, f"shards {ds.path} hold no tokens")
    ids, counts = np.unique(sample, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    top = [(int(ids[k]), int(counts[k]) / sample.size) for k in order[:2]]
    top2 = sum(share for _, share in top)

    def name(i: Optional[int]) -> str:
        if i is None:
            return "?"
        return _tok_repr(tok, i) if tok is not None else str(i)

    details: Dict[str, Any] = {
        "sampled_tokens": int(sample.size),
        "distinct_ids": int(ids.size),
        "top_ids": [{"id": i, "share": round(s, 6)} for i, s in top],
    }
    unk = tok.unk_id if tok is not None else None
    unk_share = float(np.mean(sample == unk)) if unk is not None else None
    details["unk_id"] = unk
    details["unk_share"] = unk_share
    if unk_share is not None and unk_share >= 0.5:
        return Gate(
            "corpus-degenerate",
            FAIL,
            f"{unk_share:.1%} of sampled tokens in {ds.path} are the unknown token "
            f"{name(unk)}: the corpus was encoded with a tokenizer that cannot represent it; "
            "a model would learn to predict <unk> and report a meaningless tiny val_loss",
            details,
        )
    if top2 >= 0.9:
        what = " and ".join(f"{name(i)} {s:.1%}" for i, s in top)
        return Gate(
            "corpus-degenerate",
            FAIL,
            f"{ds.path} is degenerate: {int(ids.size)} distinct ids in {sample.size} sampled "
            f"tokens, {what}: training would converge to a fake low loss",
            details,
        )
    if unk_share is not None and unk_share >= 0.01:
        return Gate(
            "corpus-degenerate",
            WARN,
            f"{unk_share:.1%} of sampled tokens in {ds.path} are the unknown token {name(unk)}",
            details,
        )
    return Gate(
        "corpus-degenerate",
        PASS,
        f"{int(ids.size)} distinct ids in {sample.size} sampled tokens of {ds.path}; most "
        f"frequent {name(top[0][0])} at {top[0][1]:.1%}",
        details,
    )


def _gate_enough(split: Any, seq_len: int, batch: int, accum: int, steps: Optional[int]) -> Gate:
    need = seq_len + 1
    tr, va = len(split.train), len(split.val)
    per_step = batch * accum * seq_len
    details = {
        "train_tokens": tr,
        "val_tokens": va,
        "window": need,
        "tokens_per_step": per_step,
        "split": split.to_dict(),
    }
    if tr < need or va < need:
        which = []
        if tr < need:
            which.append(f"the training split has {tr} tokens")
        if va < need:
            which.append(f"the validation split has {va} tokens")
        return Gate(
            "enough-tokens",
            FAIL,
            f"{' and '.join(which)}, fewer than one window of seq_len+1 = {need} "
            f"({split.description})",
            details,
        )
    if steps:
        planned = steps * per_step
        epochs = planned / tr
        details.update(planned_tokens=planned, epochs=epochs)
        if epochs > 4:
            return Gate(
                "enough-tokens",
                WARN,
                f"{steps} steps x {per_step} tokens = {planned} tokens is {epochs:.1f} passes "
                f"over the {tr}-token training split: expect overfitting",
                details,
            )
    if tr < batch * need:
        return Gate(
            "enough-tokens",
            WARN,
            f"the training split ({tr} tokens) is smaller than one batch of {batch} windows of "
            f"{need}: windows will overlap heavily",
            details,
        )
    return Gate(
        "enough-tokens",
        PASS,
        f"training split {tr} tokens, validation {va} tokens, each >= one {need}-token window",
        details,
    )


def _gate_tokens_per_param(
    split: Any, cfg: ModelConfig, from_init: bool, steps: Optional[int], per_step: int
) -> Gate:
    params = cfg.num_parameters()
    tokens = steps * per_step if steps else len(split.train)
    ratio = tokens / max(params, 1)
    details = {"parameters": params, "training_tokens": tokens, "tokens_per_parameter": ratio}
    if from_init:
        return Gate(
            "tokens-per-parameter",
            SKIP,
            f"fine-tuning a {format_count(params)}-parameter checkpoint on {tokens} tokens "
            "(compute-optimal ratio applies to from-scratch runs)",
            details,
        )
    src = f"{steps} steps" if steps else "one pass over the training split"
    if ratio < 2.0:
        return Gate(
            "tokens-per-parameter",
            WARN,
            f"{tokens} training tokens ({src}) for {format_count(params)} parameters = "
            f"{ratio:.3g} tokens/parameter, far below the compute-optimal ~20: the model will "
            "be undertrained",
            details,
        )
    return Gate(
        "tokens-per-parameter",
        PASS,
        f"{tokens} training tokens ({src}) for {format_count(params)} parameters = "
        f"{ratio:.3g} tokens/parameter",
        details,
    )


def preflight(
    tokenizer_dir: PathLike,
    dataset_dir: PathLike,
    *,
    init: Optional[PathLike] = None,
    config: Optional[PathLike] = None,
    seq_len: int = 1024,
    batch_size: int = 8,
    grad_accum: int = 1,
    steps: Optional[int] = None,
    val_shard: Optional[Union[str, int]] = None,
    val_fraction: Optional[float] = None,
    verify_digests: bool = False,
    verify_sha256: bool = False,
    scan_max_token_id: Optional[bool] = None,
) -> PreflightReport:
    """Run every gate and return the report (never raises for a failed gate; see
    :meth:`PreflightReport.raise_for_failures`).

    ``init`` (an HF checkpoint dir) or ``config`` (config.json path or preset name) gives the
    model. ``scan_max_token_id``: read every token to find the largest id (default: only for
    corpora up to 256M tokens; otherwise trust the manifest plus a sample).
    ``verify_digests``: hash every shard against its manifest digest (``verify_sha256`` is its
    older name).
    """
    from .errors import CorpusError
    from .shards import ShardDataset, split_dataset

    gates: List[Gate] = []
    summary: Dict[str, Any] = {
        "tokenizer": str(tokenizer_dir),
        "dataset": str(dataset_dir),
        "init": None if init is None else str(init),
        "config": None if config is None else str(config),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "steps": steps,
    }
    tok: Optional[TokenizerFiles] = None
    try:
        tok = read_aprx_tokenizer(tokenizer_dir)
        gates.append(
            Gate(
                "tokenizer-files",
                PASS,
                f"tokenizer {tokenizer_dir}: {tok.effective_vocab_size} ids, "
                f"{len(tok.merges) if tok.merges is not None else 'no'} merges",
            )
        )
        summary["tokenizer_vocab"] = tok.effective_vocab_size
    except PreflightError as exc:
        gates.append(Gate("tokenizer-files", FAIL, exc.message))

    cfg: Optional[ModelConfig] = None
    try:
        cfg = resolve_model_config(init=init, config=config)
        src = f"--init {init}" if init is not None else f"--config {config}"
        gates.append(
            Gate(
                "model-config",
                PASS,
                f"{src}: {format_count(cfg.num_parameters())} parameters, vocab_size "
                f"{cfg.vocab_size}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}",
            )
        )
        summary["model_vocab"] = cfg.vocab_size
        summary["parameters"] = cfg.num_parameters()
        if seq_len > cfg.max_position_embeddings:
            gates[-1] = Gate(
                "model-config",
                WARN,
                f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                f"{cfg.max_position_embeddings}",
            )
    except PreflightError as exc:
        gates.append(Gate("model-config", FAIL, exc.message))

    from_init = init is not None
    if tok is not None and cfg is not None:
        gates.append(_gate_vocab(tok, cfg, from_init))
    else:
        gates.append(Gate("vocab-size", SKIP, "tokenizer or model config unreadable"))
    if tok is not None:
        gates.append(_gate_identity(tok, init))
    else:
        gates.append(Gate("tokenizer-identity", SKIP, "tokenizer unreadable"))

    ds = None
    try:
        verify_digests = verify_digests or verify_sha256  # its older name (before 0.2)
        ds = ShardDataset(dataset_dir, verify_digests=verify_digests)
        gates.append(
            Gate(
                "shards-integrity",
                PASS,
                f"shards {dataset_dir}: {len(ds.shards)} shard(s), {len(ds)} tokens, "
                f"{ds.num_documents} documents match the manifest"
                + (" (digests verified)" if verify_digests else " (sizes; digests not verified)"),
            )
        )
        summary["dataset_tokens"] = len(ds)
        summary["dataset_documents"] = ds.num_documents
    except CorpusError as exc:
        gates.append(
            Gate("shards-integrity", FAIL, f"shards {dataset_dir}: {exc}", {"error_code": exc.code})
        )

    split = None
    if ds is None:
        for gid in ("shards-tokenizer", "max-token-id", "corpus-degenerate", "enough-tokens"):
            gates.append(Gate(gid, SKIP, "shards unreadable"))
    else:
        if tok is not None:
            gates.append(_gate_shards_tokenizer(tok, ds))
        else:
            gates.append(Gate("shards-tokenizer", SKIP, "tokenizer unreadable"))
        scan = scan_max_token_id if scan_max_token_id is not None else len(ds) <= (1 << 28)
        gates.append(_gate_max_id(ds, cfg, tok, scan))
        gates.append(_gate_degenerate(ds, tok))
        try:
            split = split_dataset(ds, val_shard=val_shard, val_fraction=val_fraction)
            summary["split"] = split.to_dict()
            gates.append(_gate_enough(split, seq_len, batch_size, grad_accum, steps))
        except CorpusError as exc:
            gates.append(Gate("enough-tokens", FAIL, f"validation split: {exc.message}"))
    if split is not None and cfg is not None:
        per_step = batch_size * grad_accum * seq_len
        gates.append(_gate_tokens_per_param(split, cfg, from_init, steps, per_step))
    else:
        gates.append(Gate("tokens-per-parameter", SKIP, "no usable split or model config"))

    return PreflightReport(
        gates=gates, summary=summary, model_config=cfg, dataset=ds, split=split, tokenizer=tok
    )


def ensure_preflight(*args: Any, **kwargs: Any) -> PreflightReport:
    """:func:`preflight`; raises :class:`PreflightError` (all failures listed) if a gate fails."""
    report = preflight(*args, **kwargs)
    report.raise_for_failures()
    return report
