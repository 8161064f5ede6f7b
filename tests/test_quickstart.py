"""The README's first command, `aprx quickstart`, end to end with its defaults: a tokenizer
trained on the interpreter's standard library, imported, the library encoded into shards,
the preflight, a tiny model trained on CPU and the val_loss verdict. Every stage runs for
real (about 40 s on 2 cores); the test checks the verdict and reads the artefacts back."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import aprx
from aprx.shards import ShardDataset

pytest.importorskip("torch")
pytest.importorskip("tokenizers")


def test_quickstart_passes_with_its_defaults(tmp_path: Path) -> None:
    out = tmp_path / "aprx-out"
    r = subprocess.run(
        [sys.executable, "-m", "aprx.cli", "quickstart", "--output", str(out), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["verdict"] == "PASS", report
    assert report["val_loss"] < report["target_val_loss"]
    art = {k: tmp_path / v for k, v in report["artefacts"].items()}
    assert all(p.exists() for p in art.values()), art

    # The shards hold the standard library's .py files (and its text files), every one of
    # them readable back, and decode to text with the tokenizer that made them.
    ds = ShardDataset(art["shards"], verify_digests=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    inputs = [Path(i["path"]) for i in ds.manifest["inputs"]]
    assert len(inputs) > 1000 and all(p.is_relative_to(stdlib) for p in inputs)
    assert stdlib / "os.py" in inputs
    tok = aprx.Tokenizer.from_file(art["tokenizer_dir"])
    assert ds.manifest["max_token_id"] < tok.vocab_size
    at = inputs.index(stdlib / "os.py")
    doc = ds.document(sum(i["documents"] for i in ds.manifest["inputs"][:at]))
    eos = ds.manifest["eos_id"]
    assert ds.manifest["eos_policy"] == "between" and doc[-1] == eos
    assert tok.decode(doc[:-1].tolist()) == (stdlib / "os.py").read_text(encoding="utf-8")
