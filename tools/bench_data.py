"""Time tokenising preference data with ``PreferenceDataModule``: the real HH-RLHF file and synthetic pairs.

    python tools/bench_data.py                                   # this checkout
    python tools/bench_data.py --before /tmp/before              # and another checkout's lit_align, alternately

Each measurement runs in a fresh process with a fresh ``datasets`` cache (nothing reused) and times
``prepare_data`` + ``setup`` (read the rows, tokenise with ``datasets.map``, filter, report). Versions and cases
alternate round by round, so both see the same load on a shared machine; the table gives the median and the best
of ``--rounds``. The tokenizer is a byte-level BPE (vocab 8192) trained here on the HH file, so nothing is
downloaded. An older checkout is one without ``num_proc``: it is timed in one process only.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HH_FILE = Path(__file__).resolve().parents[1] / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


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


def time_setup(path: str, tokenizer: str, row_format: str, num_proc: int) -> None:
    """One measurement, in this process: prints ``seconds pairs_kept`` (or ``unsupported``)."""
    import datasets

    from lit_align.data import PreferenceDataModule

    datasets.disable_progress_bars()
    kwargs = dict(row_format=row_format, val_fraction=0, max_length=1024, max_prompt_length=768)
    if num_proc > 1:
        if "num_proc" not in inspect.signature(PreferenceDataModule).parameters:
            print("unsupported")
            return
        kwargs["num_proc"] = num_proc
    with tempfile.TemporaryDirectory() as cache:
        datasets.config.HF_DATASETS_CACHE = Path(cache)
        start = time.perf_counter()
        dm = PreferenceDataModule(path, tokenizer, **kwargs)
        dm.prepare_data()
        dm.setup("fit")
        print(time.perf_counter() - start, len(dm.train_set))


def measure(tree: str, case: tuple[str, str, str], tokenizer: str, num_proc: int) -> tuple[float, int] | None:
    env = {**os.environ, "PYTHONPATH": tree}
    command = [sys.executable, __file__, "--worker", case[1], tokenizer, case[2], str(num_proc)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    last = out.stdout.strip().splitlines()[-1]
    if last == "unsupported":
        return None
    seconds, kept = last.split()
    return float(seconds), int(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="the root of another checkout (its lit_align is timed as 'before')")
    parser.add_argument("--synthetic", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-proc", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        path, tokenizer, row_format, num_proc = args.worker
        time_setup(path, tokenizer, row_format, int(num_proc))
        return
    trees = {"after": str(Path(__file__).resolve().parents[1])}
    if args.before:
        trees = {"before": str(Path(args.before).resolve()), **trees}
    with tempfile.TemporaryDirectory() as work:
        tokenizer = build_tokenizer(Path(work) / "tokenizer")
        cases = [("HH-RLHF harmless test, 2312 rows", str(HH_FILE), "hh"),
                 (f"synthetic explicit, {args.synthetic} rows",
                  synthetic_pairs(Path(work) / "syn.jsonl", args.synthetic), "explicit")]
        times: dict[tuple, list[float]] = {}
        kept: dict[tuple, int] = {}
        for _ in range(args.rounds):
            for case in cases:
                for num_proc in args.num_proc:
                    for label, tree in trees.items():
                        result = measure(tree, case, tokenizer, num_proc)
                        if result is not None:
                            times.setdefault((case[0], num_proc, label), []).append(result[0])
                            kept[case[0], num_proc, label] = result[1]
    print("| data | num_proc | version | median s | best s | pairs kept | pairs/s (median) |")
    print("|---|---|---|---|---|---|---|")
    for (name, num_proc, label), seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {num_proc} | {label} | {median:.2f} | {min(seconds):.2f} | "
              f"{kept[name, num_proc, label]} | {kept[name, num_proc, label] / median:,.0f} |")


if __name__ == "__main__":
    main()
