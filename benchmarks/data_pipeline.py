"""Throughput of the tokenizer and the Grain data pipelines on the bundled default corpus.

    python benchmarks/data_pipeline.py --vocab-size 512 --seq-len 256 --batch 8 --epochs 3

Trains a sentencepiece tokenizer on the Python docs topics (`pydoc_data.topics`), then times one
pass of the pretraining pipeline (packed tokens/s) for each worker count, and the SFT row build
(rows/s) on prompt/response pairs cut from the same topics. Prints one JSON line per
measurement, then a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness import add_output_args, emit, machine, markdown_table

from llada_jax.config import DataConfig
from llada_jax.data import DataStats, build_sft_rows, default_corpus_topics, make_pretrain_dataset, write_default_corpus
from llada_jax.io.tokenizer import load_tokenizer, train_tokenizer


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = add_output_args(ap).parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = write_default_corpus(d / "corpus")
        t0 = time.perf_counter()
        tok = load_tokenizer(train_tokenizer(files, d / "tok", args.vocab_size))
        results.append({"what": "train_tokenizer", "seconds": time.perf_counter() - t0, "vocab": tok.vocab_size,
                        "corpus_chars": sum(f.stat().st_size for f in files)})
        for workers in args.workers:
            cfg = DataConfig.from_dict({"files": [str(d / "corpus")], "num_epochs": args.epochs,
                                        "shuffle_window": 256, "worker_count": workers})
            t0 = time.perf_counter()
            it = iter(make_pretrain_dataset(cfg, tok, args.seq_len, args.batch, seed=0))
            batches = sum(1 for _ in it)
            seconds = time.perf_counter() - t0
            it.close()
            tokens = batches * args.batch * args.seq_len
            results.append({"what": f"pretrain workers={workers}", "seconds": seconds, "batches": batches,
                            "tokens": tokens, "tokens_per_s": tokens / seconds})
        pairs = []
        for text in default_corpus_topics().values():
            head, _, rest = text.partition("\n\n")
            pairs.append({"prompt": head, "response": rest[:2000]})
        (d / "sft.jsonl").write_text("\n".join(json.dumps(p) for p in pairs * 20) + "\n")
        stats = DataStats()
        t0 = time.perf_counter()
        rows = build_sft_rows(DataConfig.from_dict({"files": [str(d / "sft.jsonl")], "too_long": "truncate"}),
                              tok, args.seq_len * 4, stats=stats)
        seconds = time.perf_counter() - t0
        results.append({"what": "sft build_sft_rows", "seconds": seconds, "rows": len(rows),
                        "rows_per_s": len(rows) / seconds, **{k: v for k, v in stats.as_dict().items() if v}})
    for r in results:
        r["rate"] = (f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else
                     f"{r['rows_per_s']:,.0f} rows/s" if "rows_per_s" in r else f"vocab {r['vocab']}")
    result = {"benchmark": "data_pipeline", **machine(), "vocab_size": args.vocab_size, "seq_len": args.seq_len,
              "batch": args.batch, "epochs": args.epochs, "results": results}
    columns = [("what", "measurement", "s"), ("seconds", "seconds", ".2f"), ("rate", "rate", "s")]
    return emit(result, markdown_table(results, columns), args.json_out)


if __name__ == "__main__":
    main()
