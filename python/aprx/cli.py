"""The ``aprx`` command line: tokenizer import, corpus encoding, preflight, training and the
quickstart. Errors print ``aprx: error [CODE] message`` and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from aprx import __version__
from aprx.errors import AprxError

EPILOG = """\
pipeline:
  1. aprx tokenize import-hf --input tokenizer.json --output tok/
  2. aprx tokenize encode-corpus --corpus data.jsonl --tokenizer tok/ --output shards/
  3. aprx preflight --tokenizer tok/ --dataset shards/ --config tiny
  4. aprx pretrain --tokenizer tok/ --dataset shards/ --config tiny --output run/ --steps 200 ...
or run the whole pipeline on a built-in default corpus: aprx quickstart
"""


def _print_result(args: argparse.Namespace, obj: dict[str, Any], summary: str) -> None:
    if getattr(args, "json", False):
        json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(summary)


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from aprx.importer import import_hf

    m = import_hf(args.input, args.output, args.include_added_tokens, args.overwrite)
    _print_result(args, m, _tokenizer_summary(args.output, m))
    return 0


def _cmd_import_tiktoken(args: argparse.Namespace) -> int:
    from aprx.importer import import_tiktoken

    m = import_tiktoken(args.input, args.output, args.pattern, args.overwrite)
    _print_result(args, m, _tokenizer_summary(args.output, m))
    return 0


def _tokenizer_summary(out: str, m: dict[str, Any]) -> str:
    return (
        f"wrote {out}: {m['bpe_vocab_size']} vocab, {m['merges_count']} merges, "
        f"{m['added_tokens_count']} added tokens "
        f"({'included' if m['include_added_tokens'] else 'not included'}), "
        f"effective vocab {m['effective_vocab_size']}, normalizer {m['normalizer']}"
        + (
            f", {m['unreachable_tokens']} tokens no merge reaches (see the warning)"
            if m.get("unreachable_tokens")
            else ""
        )
    )


def _cmd_encode_corpus(args: argparse.Namespace) -> int:
    from aprx.corpus import encode_corpus

    m = encode_corpus(
        args.corpus,
        args.tokenizer,
        args.output,
        shard_tokens=args.shard_tokens,
        content_field=args.content_field,
        eos_policy=args.eos_policy,
        eos_token=args.eos_token,
        normalization=args.normalization,
        num_workers=args.num_workers,
        resume=args.resume,
        overwrite=args.overwrite,
        on_error=args.on_error,
        quiet=args.quiet or args.json,
        text_extensions=args.text_extensions.split(",") if args.text_extensions else None,
        num_tasks=args.num_tasks,
        task_index=args.task_index,
    )
    if args.json:
        # The manifest file as written: re-encoding it with an indent is pure Python, slower
        # than the run itself on a tree of many small files.
        sys.stdout.write((Path(args.output) / "manifest.json").read_text(encoding="utf-8"))
        sys.stdout.write("\n")
        return 0
    run = m["run"]
    _print_result(
        args,
        m,
        f"wrote {args.output}: {len(m['shards'])} shards, {m['total_documents']} documents, "
        f"{m['total_tokens']} tokens, {m['skipped_count']} skipped lines, "
        f"{m['empty_documents']} empty documents, max id {m['max_token_id']}; "
        f"{run['elapsed_s']:.2f} s, {run['tokens_per_s'] / 1e6:.2f} M tokens/s",
    )
    return 0


def _cmd_merge_manifests(args: argparse.Namespace) -> int:
    from aprx.scaleout import merge_manifests

    m = merge_manifests(args.tasks, args.output)
    _print_result(
        args,
        m,
        f"merged {len(args.tasks)} task outputs into {args.output}: "
        f"{len(m['shards'])} shards, {m['total_tokens']} tokens",
    )
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from aprx.quickstart import quickstart

    return quickstart(args)


def _add_tokenize(sub: Any) -> None:
    tok = sub.add_parser(
        "tokenize",
        help="import tokenizers and encode corpora into token shards",
        description="Tokenizer import and corpus encoding.",
    )
    tsub = tok.add_subparsers(dest="tokenize_command", required=True, metavar="COMMAND")

    p = tsub.add_parser(
        "import-hf",
        help="HF tokenizer.json -> vocab.json + merges.txt + manifest.json",
        description="Import a Hugging Face tokenizer.json (byte-level BPE) into an aprx "
        "tokenizer directory. Everything is validated before anything is written.",
    )
    p.add_argument("--input", required=True, help="the tokenizer.json to import")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument(
        "--include-added-tokens",
        action="store_true",
        help="keep added tokens (e.g. <|endoftext|>) in the imported tokenizer and its vocab size",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_import_hf)

    p = tsub.add_parser(
        "import-tiktoken",
        help="tiktoken rank file (Qwen, Llama-3) -> tokenizer directory",
        description="Import a tiktoken rank file: merges are recovered from the ranks, the "
        "pattern preset supplies the pre-tokenizer, normalizer and added tokens.",
    )
    p.add_argument("--input", required=True, help="rank file (base64 token, rank per line)")
    p.add_argument(
        "--pattern",
        required=True,
        choices=["qwen2", "llama3", "cl100k", "gpt2"],
        help="pre-tokenizer preset",
    )
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_import_tiktoken)

    p = tsub.add_parser(
        "encode-corpus",
        help="corpus (JSONL/.gz/.zst/Parquet/text files/dirs) -> u32 token shards",
        description="Encode a corpus into shard-NNNNN.bin (u32 LE ids) + shard-NNNNN.idx (u64 "
        "LE document ends) and manifest.json. Byte-identical output for any --num-workers and "
        "across --resume.",
    )
    p.add_argument(
        "--corpus",
        required=True,
        nargs="+",
        help="files or directories: .jsonl/.ndjson (plain, .gz, .zst), .parquet, text files; "
        ".json/.json.gz/.json.zst files named here are JSON Lines (in directories they are "
        "passed over)",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or tokenizer.json")
    p.add_argument("--output", required=True, help="shard directory")
    p.add_argument("--shard-tokens", type=int, default=10_000_000, help="rotate shards at N tokens")
    p.add_argument("--content-field", default="content", help="JSONL text field (default content)")
    p.add_argument(
        "--eos-policy",
        choices=["between", "after", "none"],
        default="between",
        help="where EOS goes: between documents (default), after each, or nowhere",
    )
    p.add_argument("--eos-token", help="EOS token string or id (default: the tokenizer's own)")
    p.add_argument(
        "--normalization",
        choices=["nfc", "none"],
        help="override the tokenizer's normalizer (default: the tokenizer's)",
    )
    p.add_argument("--num-workers", type=int, help="threads (default RAYON_NUM_THREADS or CPUs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace another run's output")
    p.add_argument(
        "--on-error",
        choices=["fail", "skip"],
        default="fail",
        help="bad lines: stop (default) or skip and list them in the manifest",
    )
    p.add_argument(
        "--text-extensions",
        help="comma-separated extensions of text files taken from directories",
    )
    p.add_argument("--num-tasks", type=int, default=1, help="split the inputs over K tasks")
    p.add_argument("--task-index", type=int, default=0, help="which task this is (0..K-1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_encode_corpus)

    p = tsub.add_parser(
        "merge-manifests",
        help="join K encode-corpus task outputs into one dataset",
        description="Join the outputs of encode-corpus --num-tasks K --task-index I runs.",
    )
    p.add_argument("--tasks", required=True, nargs="+", help="task output directories, in order")
    p.add_argument("--output", required=True, help="merged dataset directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_merge_manifests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aprx",
        description="Exact, fast byte-level BPE for code models: tokenizer import, corpus "
        "encoding into u32 shards, preflight checks and training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aprx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(sub)
    try:
        from aprx.train_cli import add_preflight_parser, add_pretrain_parser

        add_preflight_parser(sub)
        add_pretrain_parser(sub)
    except ImportError:  # pragma: no cover - training modules are part of the package
        pass
    q = sub.add_parser(
        "quickstart",
        help="run the whole pipeline on a built-in default (stdlib corpus, tiny model, CPU)",
        description="Train a tokenizer on the interpreter's standard library, import it, "
        "encode the corpus, preflight, train a tiny model and print the val_loss verdict.",
    )
    q.add_argument("--output", default="aprx-out", help="where artefacts go (default aprx-out)")
    q.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    q.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocab (default 4096)")
    q.add_argument("--target-val-loss", type=float, default=None, help="verdict threshold")
    q.add_argument("--device", default="auto", help="cpu, cuda or auto")
    q.add_argument("--json", action="store_true", help="print the final report as JSON")
    q.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AprxError as e:
        print(f"aprx: error {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aprx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
