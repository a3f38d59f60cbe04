"""Time tokenising preference data with ``PreferenceDataModule``: the real HH-RLHF file and synthetic pairs.

    python tools/bench_data.py --label after                       # this checkout
    PYTHONPATH=/path/to/older/checkout python tools/bench_data.py --label before   # another version

Each measurement builds a fresh data module in a fresh ``datasets`` cache (nothing reused) and times
``prepare_data`` + ``setup`` (read the rows, tokenise with ``datasets.map``, filter, report), best of
``--rounds``. The tokenizer is a byte-level BPE (vocab 8192) trained here on the HH file, so nothing is
downloaded. Prints one Markdown table row per case.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import tempfile
import time
from pathlib import Path

HH_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def build_tokenizer(target: Path) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["chosen"] for line in handle]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(target)
    return str(target)


def synthetic_pairs(path: Path, n: int) -> str:
    words = "good bad fine plot actor scene music long short funny dull bright dark warm cold".split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            w = [words[(i * k) % len(words)] for k in range(1, 13)]
            row = {"prompt": f"Review {i}: the {w[0]} {w[1]} of the {w[2]} {w[3]} was",
                   "chosen": f" {w[4]} and {w[5]}, with a {w[6]} {w[7]}.", "rejected": f" {w[8]}, {w[9]} and {w[10]}."}
            handle.write(json.dumps(row) + "\n")
    return str(path)


def time_setup(path: str, tokenizer: str, row_format: str, num_proc: int | None, rounds: int) -> tuple[float, int]:
    import datasets

    from lit_align.data import PreferenceDataModule

    best, kept = float("inf"), 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            datasets.config.HF_DATASETS_CACHE = Path(cache)
            kwargs = dict(row_format=row_format, val_fraction=0, max_length=1024, max_prompt_length=768)
            if num_proc:
                kwargs["num_proc"] = num_proc
            start = time.perf_counter()
            dm = PreferenceDataModule(path, tokenizer, **kwargs)
            dm.prepare_data()
            dm.setup("fit")
            best, kept = min(best, time.perf_counter() - start), len(dm.train_set)
    return best, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after")
    parser.add_argument("--synthetic", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-proc", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    from lit_align.data import PreferenceDataModule

    datasets.disable_progress_bars()
    has_num_proc = "num_proc" in inspect.signature(PreferenceDataModule).parameters
    with tempfile.TemporaryDirectory() as work:
        tokenizer = build_tokenizer(Path(work) / "tokenizer")
        cases = [("HH-RLHF harmless test (2312 rows)", str(HH_FILE), "hh"),
                 (f"synthetic explicit ({args.synthetic} rows)", synthetic_pairs(Path(work) / "syn.jsonl",
                                                                                  args.synthetic), "explicit")]
        print("| version | data | num_proc | seconds | pairs kept | pairs/s |\n|---|---|---|---|---|---|")
        for name, path, row_format in cases:
            for num_proc in args.num_proc if has_num_proc else [1]:
                seconds, kept = time_setup(path, tokenizer, row_format, num_proc if num_proc > 1 else None,
                                           args.rounds)
                print(f"| {args.label} | {name} | {num_proc} | {seconds:.2f} | {kept} | {kept / seconds:,.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
