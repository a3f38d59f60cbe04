"""Exactly one end of turn with the public chat templates of Qwen2.5 (ChatML), Llama-3 and Gemma, written out in
``tests/chat_templates/`` and run on tokenizers built here with those families' special tokens (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_align.data import LengthSettings, PairTokenizer, PreferenceDataModule
from lit_align.data.tokenize import OK
from tests.conftest import explicit_rows, write_jsonl

TEMPLATES = Path(__file__).parent / "chat_templates"
QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
# per family: special tokens, bos/eos/pad, the template file, the prompt and chosen response texts expected
FAMILIES = {
    "qwen2.5": dict(
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        prompt=QWEN_SYSTEM + "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        chosen="Blue, like the sea.<|im_end|>", end="<|im_end|>",
    ),
    "llama3": dict(  # a base tokenizer's EOS with the instruct template: the turn ends with <|eot_id|>, not EOS
        special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>",
        prompt="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        chosen="Blue, like the sea.<|eot_id|>", end="<|eot_id|>",
    ),
    "gemma": dict(
        special=["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", pad="<pad>",
        prompt="<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
        chosen="Blue, like the sea.<end_of_turn>", end="<end_of_turn>",
    ),
}
QUESTION = [{"role": "user", "content": "Name a colour."}]
GOOD = [{"role": "assistant", "content": "Blue, like the sea."}]
BAD = [{"role": "assistant", "content": "No."}]


def build_tokenizer(family: str, template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab 400) with the family's special tokens and, unless told not to, its
    public chat template."""
    spec = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=spec["special"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [row[key] for row in explicit_rows(48) for key in ("prompt", "chosen", "rejected")]
    tokenizer.train_from_iterator(texts + ["Name a colour. Blue, like the sea. No. Red! user model assistant"], trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"]
    )
    if template:
        wrapped.chat_template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    return wrapped


def tokenise(tokenizer, rows: list[dict], system_prompt: str | None = None) -> list[dict]:
    columns = {key: [row.get(key) for row in rows] for key in dict.fromkeys(k for row in rows for k in row)}
    out = PairTokenizer(tokenizer, "auto", LengthSettings(4096, 2048), system_prompt)(columns)
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_response_ends_with_the_templates_own_end_of_turn_once(family):
    spec, tokenizer = FAMILIES[family], build_tokenizer(family)
    end = tokenizer.convert_tokens_to_ids(spec["end"])
    for row in (
        {"prompt": QUESTION, "chosen": GOOD, "rejected": BAD},  # explicit prompt
        {"chosen": QUESTION + GOOD, "rejected": QUESTION + BAD},  # implicit prompt
        {"prompt": "Name a colour.", "chosen": QUESTION + GOOD, "rejected": QUESTION + BAD},  # UltraFeedback
    ):
        (pair,) = tokenise(tokenizer, [row])
        assert pair["status"] == OK and pair["notes"] == [] and pair["layout"] == "conversational"
        assert tokenizer.decode(pair["prompt_ids"]) == spec["prompt"]
        assert tokenizer.decode(pair["chosen_ids"]) == spec["chosen"]  # no "\n" after it, no second end, no EOS
        assert tokenizer.decode(pair["rejected_ids"]) == spec["chosen"].replace("Blue, like the sea.", "No.")
        for response in (pair["chosen_ids"], pair["rejected_ids"]):
            assert response[-1] == end and response.count(end) == 1
            assert tokenizer.eos_token_id not in response or tokenizer.eos_token_id == end
        rendered = tokenizer.apply_chat_template(QUESTION + GOOD, tokenize=False)
        assert rendered.rstrip("\n") == spec["prompt"].removesuffix(_generation_prompt(family)) + _turn(family)


def _generation_prompt(family: str) -> str:
    return {"qwen2.5": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "gemma": "<start_of_turn>model\n"}[family]


def _turn(family: str) -> str:
    return _generation_prompt(family) + FAMILIES[family]["chosen"]


@pytest.mark.parametrize("family", FAMILIES)
def test_later_turns_keep_their_newlines_in_the_prompt(family):
    tokenizer = build_tokenizer(family)
    history = QUESTION + GOOD + [{"role": "user", "content": "Another one?"}]
    (pair,) = tokenise(tokenizer, [{"prompt": history, "chosen": BAD, "rejected": GOOD}])
    assert pair["status"] == OK
    assert tokenizer.decode(pair["prompt_ids"]) == tokenizer.apply_chat_template(
        history, tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(pair["chosen_ids"]) == FAMILIES[family]["chosen"].replace("Blue, like the sea.", "No.")


def test_text_rows_get_eos_once_with_a_chat_tokenizer():
    tokenizer = build_tokenizer("qwen2.5")
    eos = tokenizer.eos_token_id
    rows = [{"prompt": "Q?", "chosen": " yes", "rejected": " no<|im_end|>"}]
    (pair,) = tokenise(tokenizer, rows)
    assert pair["chosen_ids"][-1] == eos and pair["chosen_ids"].count(eos) == 1
    assert pair["rejected_ids"] == tokenizer(" no", add_special_tokens=False)["input_ids"] + [eos]


def test_a_template_whose_turns_end_in_plain_text_gets_eos_appended():
    tokenizer = build_tokenizer("qwen2.5", template=False)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    (pair,) = tokenise(tokenizer, [{"prompt": QUESTION, "chosen": GOOD, "rejected": BAD}])
    assert tokenizer.decode(pair["chosen_ids"]) == "Blue, like the sea.\n<|im_end|>"  # the template's text, then EOS


def test_system_prompt_goes_first_unless_the_conversation_has_one():
    tokenizer = build_tokenizer("qwen2.5")
    system = [{"role": "system", "content": "Be kind."}]
    first, second = tokenise(
        tokenizer,
        [{"prompt": QUESTION, "chosen": GOOD, "rejected": BAD}, {"prompt": system + QUESTION, "chosen": GOOD,
                                                                 "rejected": BAD}],
        system_prompt="Be brief.",
    )
    assert tokenizer.decode(first["prompt_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert tokenizer.decode(second["prompt_ids"]).startswith("<|im_start|>system\nBe kind.<|im_end|>\n")


def test_an_exception_inside_the_template_skips_that_row_only():
    tokenizer = build_tokenizer("gemma")
    rows = [
        {"prompt": QUESTION, "chosen": GOOD, "rejected": BAD},
        {"prompt": [{"role": "system", "content": "Be brief."}, *QUESTION], "chosen": GOOD, "rejected": BAD},
        {"prompt": QUESTION + QUESTION, "chosen": GOOD, "rejected": BAD},  # roles must alternate
    ]
    statuses = [pair["status"] for pair in tokenise(tokenizer, rows)]
    assert statuses == [
        OK,
        "chat_template_error(System role not supported)",
        "chat_template_error(Conversation roles must alternate user/assistant/user/assistant/...)",
    ]


@pytest.mark.parametrize("given_as", ["file", "string"])
def test_chat_template_override_for_a_tokenizer_without_one(tmp_path, given_as):
    tokenizer_dir = tmp_path / "tokenizer"
    build_tokenizer("qwen2.5", template=False).save_pretrained(tokenizer_dir)
    template = TEMPLATES / "qwen2.5.jinja"
    rows = [{"prompt": QUESTION, "chosen": [{"role": "assistant", "content": f"Blue {i}."}], "rejected": BAD}
            for i in range(4)]
    dm = PreferenceDataModule(
        str(write_jsonl(tmp_path / "chat.jsonl", rows)), str(tokenizer_dir), val_fraction=0,
        chat_template=str(template) if given_as == "file" else template.read_text(encoding="utf-8"),
    )
    dm.setup("fit")
    assert len(dm.train_set) == 4
    assert dm.tokenizer.decode(dm.train_set[0]["chosen_ids"]) == "Blue 0.<|im_end|>"
    with pytest.raises(ValueError, match="neither a Jinja string nor a file"):
        PreferenceDataModule(str(tmp_path / "chat.jsonl"), str(tokenizer_dir), chat_template="missing.jinja")
