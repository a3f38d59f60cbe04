"""The layouts people publish, loaded as they are; ``load_dataset`` options; weighted mixtures; bad rows and bad
lines that never sink a file."""

from __future__ import annotations

import gzip
import re
from collections import Counter

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from lit_align.data import DataSource, LengthSettings, Mixture, PairTokenizer, PreferenceDataModule
from tests.conftest import HH_FILE, explicit_rows, write_jsonl

ROWS = explicit_rows(24)
QUESTION = [{"role": "user", "content": "Name a colour."}]


def data_module(path=None, tokenizer_dir=None, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(None if path is None else str(path), tokenizer_dir, **{"val_fraction": 0, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def triples(split: Dataset) -> list[tuple]:
    return [tuple(map(tuple, (p["prompt_ids"], p["chosen_ids"], p["rejected_ids"]))) for p in split]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def explicit_pairs(tokenizer_dir, tmp_path_factory) -> list[tuple]:
    """``ROWS`` in the explicit layout: what every other layout of the same pairs must give."""
    path = write_jsonl(tmp_path_factory.mktemp("explicit") / "p.jsonl", ROWS)
    return triples(data_module(path, tokenizer_dir).train_set)


# ---- layouts ----------------------------------------------------------------------------------------------


def test_trl_standard_rows_with_an_implicit_prompt(tmp_path, tokenizer_dir, tokenizer):
    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in ROWS]
    dm = data_module(write_jsonl(tmp_path / "implicit.jsonl", rows), tokenizer_dir)
    assert not dm.report["train"]["skipped"] and dm.report["train"]["layouts"] == Counter(implicit=len(rows))
    eos = tokenizer.eos_token_id
    for row, pair in zip(rows, dm.train_set, strict=True):
        chosen, rejected = (tokenizer(row[key])["input_ids"] for key in ("chosen", "rejected"))
        prompt = pair["prompt_ids"]
        assert prompt + pair["chosen_ids"] == chosen + [eos] and prompt + pair["rejected_ids"] == rejected + [eos]
        assert chosen[len(prompt)] != rejected[len(prompt)]  # the longest run both tokenisations share
        assert tokenizer.decode(prompt).startswith(row["chosen"][:20])


def test_an_implicit_prompt_is_cut_where_the_tokenisations_agree(tokenizer):
    """Texts that share characters beyond a token boundary: the prompt stops at the last token both share."""
    row = {"chosen": "How was the film? It was great", "rejected": "How was the film? It was grim"}
    out = PairTokenizer(tokenizer, "auto", LengthSettings())({k: [v] for k, v in row.items()})
    prompt, chosen = out["prompt_ids"][0], out["chosen_ids"][0]
    assert out["layout"] == ["implicit"] and out["status"] == ["ok"]
    assert tokenizer.decode(prompt) + tokenizer.decode(chosen[:-1]) == row["chosen"]
    assert prompt == tokenizer(row["chosen"])["input_ids"][: len(prompt)]
    assert "How was the film? It was gr".startswith(tokenizer.decode(prompt))  # within the common characters
    assert chosen[0] != out["rejected_ids"][0][0]  # and no further than the tokens agree


def test_ultrafeedback_binarized_rows(tmp_path, tokenizer_dir, tokenizer):
    """HuggingFaceH4/ultrafeedback_binarized: ``prompt`` a string, full conversations repeating the user turn,
    and extra columns (``prompt_id``, ``messages``, scores) that are ignored."""
    rows = []
    for i, r in enumerate(ROWS):
        user = {"role": "user", "content": r["prompt"]}
        chosen = [user, {"role": "assistant", "content": r["chosen"].strip()}]
        rows.append({"prompt": r["prompt"], "prompt_id": f"{i:064x}", "chosen": chosen,
                     "rejected": [user, {"role": "assistant", "content": r["rejected"].strip()}],
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.5})
    dm = data_module(write_jsonl(tmp_path / "uf.jsonl", rows), tokenizer_dir)
    assert not dm.report["train"]["skipped"] and dm.report["train"]["layouts"] == Counter(conversational=len(rows))
    pair = dm.train_set[0]
    assert tokenizer.decode(pair["prompt_ids"]) == f"<|user|>{ROWS[0]['prompt']}</s><|assistant|>"
    assert tokenizer.decode(pair["chosen_ids"]) == ROWS[0]["chosen"].strip() + "</s>"
    # the same pairs as the trl-lib layout (prompt as a message list, answer-only lists)
    trl = [{"prompt": r["chosen"][:1], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]} for r in rows]
    assert triples(data_module(write_jsonl(tmp_path / "trl.jsonl", trl), tokenizer_dir).train_set) == triples(
        dm.train_set
    )


def test_a_prompt_string_with_answer_only_lists_is_the_users_turn(tokenizer):
    row = {"prompt": ["Name a colour."], "chosen": [[{"role": "assistant", "content": "Blue."}]],
           "rejected": [[{"role": "assistant", "content": "No."}]]}
    out = PairTokenizer(tokenizer, "auto", LengthSettings())(row)
    assert tokenizer.decode(out["prompt_ids"][0]) == "<|user|>Name a colour.</s><|assistant|>"


def test_a_columns_mapping_reads_other_names(tmp_path, tokenizer_dir, explicit_pairs):
    rows = [{"question": r["prompt"], "response_j": r["chosen"], "response_k": r["rejected"], "qid": i}
            for i, r in enumerate(ROWS)]
    path = write_jsonl(tmp_path / "se.jsonl", rows)
    columns = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    assert triples(data_module(path, tokenizer_dir, columns=columns).train_set) == explicit_pairs
    with pytest.raises(ValueError, match=r"columns maps to \['answer'\].*its columns are \['question'"):
        data_module(path, tokenizer_dir, columns={**columns, "chosen": "answer"})


def test_the_report_names_each_sources_layout(tmp_path, tokenizer_dir, caplog):
    hh = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}] * 3
    dm = data_module(write_jsonl(tmp_path / "hh.jsonl", hh), tokenizer_dir)
    assert dm.report["train"]["layouts"] == Counter(hh=3)
    assert re.search(r"train \(.*hh.jsonl, read as hh\): kept 3 of 3 pairs", caplog.text)


def test_real_hh_counts(tokenizer_dir):
    dm = data_module(HH_FILE, tokenizer_dir, max_length=4096, max_prompt_length=2048)
    report = dm.report["train"]
    assert report["rows"]["total"] == 2312 and len(dm.train_set) == 2303
    assert dict(report["skipped"]) == {"hh_prompts_differ": 5, "empty_response": 4}
    assert report["layouts"] == Counter(hh=2312)


# ---- load_dataset options ---------------------------------------------------------------------------------


def test_split_slicing_on_a_local_file(tmp_path, tokenizer_dir, explicit_pairs):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    assert triples(data_module(path, tokenizer_dir, split="train[:25%]").train_set) == explicit_pairs[:6]
    assert triples(data_module(path, tokenizer_dir, split="train[-4:]").train_set) == explicit_pairs[-4:]
    dm = data_module(path, tokenizer_dir, split="train[:20]", val_path=str(path), val_split="train[20:]")
    assert triples(dm.train_set) == explicit_pairs[:20] and triples(dm.val_set) == explicit_pairs[20:]


def test_name_data_dir_and_data_files_reach_load_dataset(tmp_path, tokenizer_dir, explicit_pairs):
    root = tmp_path / "repo"
    (root / "small").mkdir(parents=True)
    (root / "big").mkdir()
    write_jsonl(root / "small" / "part.jsonl", ROWS[:5])
    write_jsonl(root / "big" / "part.jsonl", ROWS)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files: small/*.jsonl\n"
        "- config_name: big\n  data_files: big/*.jsonl\n---\n", encoding="utf-8"
    )
    assert triples(data_module(root, tokenizer_dir, name="small").train_set) == explicit_pairs[:5]
    assert triples(data_module(root, tokenizer_dir, name="big").train_set) == explicit_pairs
    assert triples(data_module(root, tokenizer_dir, data_dir="big").train_set) == explicit_pairs
    files = str(root / "small" / "part.jsonl")
    assert triples(data_module("json", tokenizer_dir, data_files=files).train_set) == explicit_pairs[:5]


def test_num_proc_gives_the_same_pairs(tmp_path, tokenizer_dir, explicit_pairs):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    assert triples(data_module(path, tokenizer_dir, num_proc=2).train_set) == explicit_pairs


# ---- mixtures ---------------------------------------------------------------------------------------------


def mixture_sources(tmp_path, weights=(3.0, 1.0)) -> list[DataSource]:
    plain = write_jsonl(tmp_path / "plain.jsonl", explicit_rows(40))
    renamed = [{"q": f"Other {i}?", "good": f" Yes {i}.", "bad": " No."} for i in range(40)]
    other = write_jsonl(tmp_path / "other.jsonl", renamed)
    return [
        DataSource(str(plain), row_format="explicit", weight=weights[0]),
        DataSource(str(other), columns={"prompt": "q", "chosen": "good", "rejected": "bad"}, weight=weights[1]),
    ]


def test_a_weighted_mixture_is_seeded_and_follows_its_weights(tmp_path, tokenizer_dir, tokenizer):
    def mixed(seed: int) -> list[tuple]:
        source = Mixture(mixture_sources(tmp_path), seed=seed)
        return triples(data_module(source=source, tokenizer_dir=tokenizer_dir).train_set)

    first = mixed(0)
    assert first == mixed(0) and first != mixed(1)
    from_other = sum(tokenizer.decode(list(prompt)).startswith("Other") for prompt, _, _ in first)
    assert len(first) == len(set(first))  # first_exhausted: nothing repeats
    assert 0.1 < from_other / len(first) < 0.4  # weights 3:1
    dm = data_module(source=Mixture(mixture_sources(tmp_path)), tokenizer_dir=tokenizer_dir)
    assert set(dm.report) == {"train[0]", "train[1]"}
    assert dm.report["train[1]"]["layouts"] == Counter(explicit=40)


def test_all_exhausted_uses_every_pair_of_every_source(tmp_path, tokenizer_dir):
    source = Mixture(mixture_sources(tmp_path), stopping_strategy="all_exhausted")
    pairs = triples(data_module(source=source, tokenizer_dir=tokenizer_dir).train_set)
    assert len(set(pairs)) == 80


def test_a_mixture_holds_out_part_of_each_source(tmp_path, tokenizer_dir):
    dm = data_module(source=Mixture(mixture_sources(tmp_path, (1.0, 1.0))), tokenizer_dir=tokenizer_dir,
                     val_fraction=0.25)
    assert len(dm.val_set) == 20 and not set(triples(dm.val_set)) & set(triples(dm.train_set))


def test_mixture_settings_are_checked():
    with pytest.raises(ValueError, match="weight must be > 0"):
        DataSource("x.jsonl", weight=0)
    with pytest.raises(ValueError, match="at least one source"):
        Mixture([])
    with pytest.raises(ValueError, match="not both"):
        PreferenceDataModule("x.jsonl", "tok", source=DataSource("y.jsonl"))


# ---- bad rows and bad lines -------------------------------------------------------------------------------


def test_a_conversation_that_cannot_be_rendered_is_one_counted_skip(tmp_path, tokenizer_dir):
    answer = [{"role": "assistant", "content": "Blue."}]
    bad = [
        {"prompt": [], "chosen": answer, "rejected": [{"role": "assistant", "content": "No."}]},  # empty conversation
        {"chosen": QUESTION, "rejected": QUESTION},  # no assistant turn
    ]
    good = [{"prompt": QUESTION, "chosen": answer, "rejected": [{"role": "assistant", "content": f"No {i}."}]}
            for i in range(3)]
    dm = data_module(write_jsonl(tmp_path / "chat.jsonl", good + bad), tokenizer_dir)
    assert dict(dm.report["train"]["skipped"]) == {"empty_prompt": 1, "no_assistant_turn": 1}
    assert len(dm.train_set) == 3


BAD_LINES = b'{"prompt": "Q?", "chosen": " a", "rejected": " b"}\n{"prompt": \n[1, 2]\n'


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_a_malformed_line_names_the_file_and_line(tmp_path, tokenizer_dir, name):
    path = tmp_path / name
    rows = b"".join(b'{"prompt": "Q%d?", "chosen": " a", "rejected": " b"}\n' % i for i in range(5)) + BAD_LINES
    path.write_bytes(gzip.compress(rows) if name.endswith(".gz") else rows)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 7 is not valid JSON.*skip_bad_lines"):
        data_module(path, tokenizer_dir)
    dm = data_module(path, tokenizer_dir, skip_bad_lines=True)
    assert dict(dm.report["train"]["skipped"]) == {"bad_json": 2} and dm.report["train"]["rows"]["total"] == 8
    assert len(dm.train_set) == 6


def test_a_malformed_json_document_names_its_line(tmp_path, tokenizer_dir):
    path = tmp_path / "pairs.json"
    path.write_bytes(b'[\n{"prompt": "Q?", "chosen": " a", "rejected": " b"},\n{"prompt": }\n]')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 3 is not valid JSON"):
        data_module(path, tokenizer_dir, skip_bad_lines=True)


def test_the_mixture_yaml_of_the_docs_parses_and_loads(tmp_path, tokenizer_dir):
    """The YAML shape of docs/data.md (a list of sources without class_path), read as LightningCLI reads it."""
    from jsonargparse import ArgumentParser

    plain, other = mixture_sources(tmp_path)
    config = f"""
data:
  class_path: lit_align.data.PreferenceDataModule
  init_args:
    tokenizer: {tokenizer_dir}
    val_fraction: 0
    source:
      class_path: lit_align.data.Mixture
      init_args:
        seed: 0
        sources:
          - path: {plain.path}
            row_format: explicit
            split: train[:50%]
            weight: 3
          - path: {other.path}
            columns: {{prompt: q, chosen: good, rejected: bad}}
            skip_bad_lines: true
"""
    parser = ArgumentParser()
    parser.add_subclass_arguments(PreferenceDataModule, "data")
    dm = parser.instantiate(parser.parse_string(config)).data
    assert isinstance(dm.source, Mixture) and [s.weight for s in dm.source.sources] == [3.0, 1.0]
    dm.setup("fit")
    assert dm.report["train[0]"]["rows"]["total"] == 20 and dm.report["train[1]"]["rows"]["total"] == 40
