"""The compiled WordPiece tokenizer (``cmow._wordpiece``, via ``_token_ids``) gives exactly the backend's ids."""

import gzip
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cmow import CMOWConfig, CMOWModel, encode
from cmow.distill.student_tokenizer import train_student_tokenizer
from cmow.encode import WORDPIECE_MODULE, _backend_ids, _special_ids, _token_ids, _unpadded, compiled_wordpiece
from cmow.glue.data import load_glue
from conftest import script_without_extension, tiny_config

pytest.importorskip(WORDPIECE_MODULE, reason="cmow was installed without its compiled tokenizer")

PRINTABLE = [chr(c) for c in range(32, 127)]
CONTROLS = [chr(c) for c in itertools.chain(range(32), [127])]
ADVERSARIAL = (
    [
        "",
        " ",
        "\t\n\r",
        "  leading and trailing  ",
        "!!!???...,,,;;;:::",
        "--==--**&&^^%%$$##@@",
        "a.b,c;d:e!f?g",
        "".join(PRINTABLE),
        "1234567890 3.14159 1,000,000 007 2nd 10x",
        "tabs\tand\nnewlines\rand\r\ncrlf",
        "a" * 99,
        "a" * 100,
        "a" * 101,
        "unbelievably " * 40,
        "supercalifragilisticexpialidocious" * 3,
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "xqzxqzxqz qqqqqqqqqqqq zzzzzz jjjjjj",
        "The [MASK] sat on the mat.",
        "[CLS] text [SEP] more [PAD] [UNK]",
        "[mask] [cls] lower-case specials",
        "brackets [ and ] alone",
        "Mixed CASE Words And ACRONYMS like NASA",
        "it 's a cool event for the whole family .",
        "e-mail: someone@example.com, url: https://example.com/a_b?c=d&e=f#g",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
        "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0 and \u4e2d\u6587",
        "emoji \U0001f600 \U0001f44d\U0001f3fd",
        "non\u00a0breaking\u2003spaces\u200bzero width",
        "\u00c9COLE \u00c5ngstr\u00f6m \u0130stanbul \u00df",
        "\u201cCurly,\u201d she said \u2014 \u2018quoted\u2019 \u2013 it\u2019s",
        "\u00abguillemets\u00bb \u00bfno? \u00a1s\u00ed!",
        "\u2026 \u00b7 \u00a7 \u00b6 \u2020 \u2021 \u2030 \u203b \u3001 \u3002 \u300c \u300d \u30fb \uff01 \uff08",
        "\u00abGuillemets\u00bb and \u201cquotes\u201d only",
        "Punctuation\u2014without\u2014spaces\u2026and\u2019apostrophes",
        "Greek question mark\u037e and ano teleia\u0387 decompose to ; and \u00b7",
    ]
    + [f"x{c}y {c} word{c} {c}word" for c in PRINTABLE + CONTROLS]
    + [f"ab{c}cd" for c in CONTROLS]
)


def assert_same_ids(tokenizer, texts: list[str], threads: int = 2) -> list:
    """``_token_ids`` equals the backend on ``texts``; returns the compiled tokenizer's own answer (None: declined)."""
    backend = tokenizer.backend_tokenizer
    native = compiled_wordpiece(tokenizer, backend)
    assert native is not None, "the compiled tokenizer should apply to this tokenizer"
    expected = _backend_ids(_unpadded(tokenizer, backend), texts)
    answer = native.encode(texts, threads)
    for index, (row, reference) in enumerate(zip(answer, expected, strict=True)):
        assert row is None or row == reference, f"text {index} {texts[index]!r}: {row} != {reference}"
    assert _token_ids(tokenizer, texts) == expected
    # and both equal the transformers call (no truncation asked for, so none happens): a stale copy would not
    assert expected == tokenizer(texts, add_special_tokens=True)["input_ids"]
    return answer


def accepted(answer: list) -> float:
    return sum(row is not None for row in answer) / len(answer)


def edited(tokenizer, **changes) -> PreTrainedTokenizerFast:
    """A copy of ``tokenizer`` with parts of its backend's JSON replaced (``normalizer={...}`` merges into it)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for part, value in changes.items():
        spec[part] = {**spec[part], **value} if part == "normalizer" else value
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


@pytest.fixture(scope="module")
def glue_texts(shared_data) -> list[str]:
    """Every SST-2 sentence (train and dev) and both sentences of every MRPC and STS-B pair."""
    texts = []
    for task in ("SST-2", "MRPC", "STS-B"):
        for split in load_glue(task, shared_data / "glue").values():
            texts += list(split["text_a"]) + (list(split["text_b"]) if "text_b" in split.column_names else [])
    return texts


@pytest.fixture(scope="module")
def paragraphs(shared_data) -> list[str]:
    """3,000 Gutenberg paragraphs spread over the corpus, as they are in the file (untrimmed)."""
    with gzip.open(shared_data / "corpus" / "gutenberg_train_50MB.txt.gz", "rt", encoding="utf-8") as lines:
        return list(itertools.islice(lines, 0, 150_000, 50))


def test_glue_sentences_get_the_backends_ids(tokenizer, glue_texts):
    assert len(glue_texts) > 67_349 + 872 + 2 * (3_668 + 5_749)
    answer = assert_same_ids(tokenizer, glue_texts)
    assert accepted(answer) > 0.98, "nearly all GLUE sentences are ASCII without brackets"


def test_corpus_paragraphs_get_the_backends_ids(tokenizer, paragraphs):
    answer = assert_same_ids(tokenizer, paragraphs)
    assert accepted(answer) > 0.85, "curly quotes and dashes are compiled too; accents and brackets are not"


def test_adversarial_texts_get_the_backends_ids(tokenizer):
    answer = assert_same_ids(tokenizer, ADVERSARIAL)
    by_text = dict(zip(ADVERSARIAL, answer, strict=True))
    assert by_text["a" * 101] == [101, 100, 102], "a word longer than max_input_chars_per_word is [UNK]"
    assert by_text[""] == [101, 102]
    assert by_text["ab\x01cd"] == by_text["ab\x7fcd"] == assert_same_ids(tokenizer, ["abcd"])[0], "controls vanish"
    for declined in ("The [MASK] sat on the mat.", "".join(PRINTABLE), "caf\u00e9 na\u00efve r\u00e9sum\u00e9"):
        assert by_text[declined] is None, f"{declined!r} is for the backend"
    assert None not in (by_text["!!!???...,,,;;;:::"], by_text["tabs\tand\nnewlines\rand\r\ncrlf"], by_text["a" * 100])
    for punctuated in (
        "\u00abGuillemets\u00bb and \u201cquotes\u201d only",
        "\u201cCurly,\u201d she said \u2014 \u2018quoted\u2019 \u2013 it\u2019s",
    ):
        assert by_text[punctuated] is not None, "curly quotes and dashes are compiled"


def test_mixed_batches_keep_their_order(tokenizer):
    texts = list(itertools.chain.from_iterable(zip(ADVERSARIAL, reversed(ADVERSARIAL), strict=True)))
    assert_same_ids(tokenizer, texts * 5)
    assert_same_ids(tokenizer, ["only ascii", "caf\u00e9"])
    assert_same_ids(tokenizer, ["caf\u00e9"])


def test_large_batches_shared_among_threads_give_the_same_ids(tokenizer, paragraphs):
    native = compiled_wordpiece(tokenizer, tokenizer.backend_tokenizer)
    alone = native.encode(paragraphs, 1)
    assert native.encode(paragraphs, 3) == native.encode(paragraphs, 8) == alone
    assert native.encode(tuple(paragraphs[:5]), 2) == alone[:5]
    with pytest.raises(TypeError, match="not a str"):
        native.encode(["text", 3], 2)


def test_a_word_whose_pieces_are_missing_is_unknown():
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "ab", "##c", "a", "!"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=7))
    spec = json.loads(backend.to_str())
    spec["normalizer"] = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                          "strip_accents": None, "lowercase": True}  # fmt: skip
    spec["pre_tokenizer"] = {"type": "BertPreTokenizer"}
    spec["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    texts = ["abc", "ABc!", "abcc", "abd", "ba", "a ab abc", "abcabc", "abcccccc", "abccccc"]
    answer = assert_same_ids(tokenizer, texts)
    assert answer[:5] == [[2, 4, 5, 3], [2, 4, 5, 7, 3], [2, 4, 5, 5, 3], [2, 1, 3], [2, 1, 3]]
    assert answer[-2:] == [[2, 1, 3], [2, 4, 5, 5, 5, 5, 5, 3]], "8 characters: longer than max_input_chars_per_word"


@pytest.mark.parametrize(
    "normalizer",
    [
        {"lowercase": False},
        {"lowercase": False, "strip_accents": False},
        {"clean_text": False},
        {"clean_text": False, "lowercase": False, "handle_chinese_chars": False},
        {"strip_accents": True, "handle_chinese_chars": False},
    ],
)
def test_other_bert_normalizer_settings_get_the_backends_ids(tokenizer, normalizer, glue_texts):
    variant = edited(tokenizer, normalizer=normalizer)
    answer = assert_same_ids(variant, ADVERSARIAL + glue_texts[:5000])
    assert accepted(answer) > 0.9


@pytest.mark.parametrize(
    "post_processor",
    [
        {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]},
        {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [],
            "special_tokens": {},
        },  # fmt: skip
        {
            "type": "TemplateProcessing",
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [101, 103], "tokens": []}},
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            ],
            "pair": [],
        },  # fmt: skip
    ],
)
def test_other_templates_get_the_backends_ids(tokenizer, post_processor):
    assert_same_ids(edited(tokenizer, post_processor=post_processor), ADVERSARIAL)


def test_added_tokens_rebuild_the_compiled_tokenizer(teacher_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)  # its own copy: tokens are added to it
    tokenizer.backend_tokenizer.enable_truncation(max_length=512)  # as many tokenizer.json files have: copied once
    texts = ["helloworld and hello there", "Foobar FOO foo", "Quxbar qux", "a <ent> b", "nothing special", "cmowxyz"]
    texts += ["a \u00abtag\u00bb b \u00abzap\u00bb", "\u201cquoted\u201d"]  # no first character of the others
    texts += ADVERSARIAL
    first = compiled_wordpiece(tokenizer, tokenizer.backend_tokenizer)
    assert_same_ids(tokenizer, texts)
    tokenizer.add_tokens(["hello"])  # already in the vocabulary: the vocabulary size does not change
    assert compiled_wordpiece(tokenizer, tokenizer.backend_tokenizer) is not first, "a stale tokenizer was kept"
    assert_same_ids(tokenizer, texts)
    assert _token_ids(tokenizer, ["helloworld"])[0][1] == tokenizer.convert_tokens_to_ids("hello")
    # matched in the normalised text ("foo", also in "FOO") and in the raw text only ("Qux", not "qux")
    tokenizer.add_tokens(["cmowxyz", AddedToken("Foo", normalized=True), AddedToken("Qux", normalized=False)])
    tokenizer.add_tokens(["\u00abtag\u00bb"])  # starts with punctuation the compiled code takes otherwise
    tokenizer.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    answer = assert_same_ids(tokenizer, texts)
    assert answer[-len(ADVERSARIAL) :].count(None) < len(ADVERSARIAL), "texts without added tokens stay compiled"
    assert answer[7] is not None, "\u201c is no added token's first character"


def test_a_backend_changed_after_first_use_is_not_served_stale_ids(teacher_path):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)  # its own copy: its backend is changed
    texts = ["Hello World", "helloworld again, and a longword"]
    assert_same_ids(tokenizer, texts)
    tokenizer.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert _token_ids(tokenizer, texts) == tokenizer(texts)["input_ids"]
    tokenizer.backend_tokenizer.model.max_input_chars_per_word = 5
    assert _token_ids(tokenizer, texts) == tokenizer(texts)["input_ids"]
    assert tokenizer.unk_token_id in _token_ids(tokenizer, texts)[1]


def test_a_template_that_names_a_second_sequence_for_single_texts_is_not_compiled():
    special = {"[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]}}
    single = [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    processor = {"type": "TemplateProcessing", "special_tokens": special, "pair": []}
    assert _special_ids({**processor, "single": single}) == ([101], [])
    assert _special_ids({**processor, "single": [*single, {"Sequence": {"id": "B", "type_id": 1}}]}) is None


def test_a_trained_student_vocabulary_gets_the_backends_ids(tokenizer, glue_texts):
    student = train_student_tokenizer(tokenizer, glue_texts[:20_000], vocab_size=300)
    answer = assert_same_ids(student, ADVERSARIAL + glue_texts[-5000:])
    assert accepted(answer) > 0.9


def test_tokenizers_that_are_not_bert_wordpiece_get_no_compiled_tokenizer(tokenizer):
    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(ADVERSARIAL * 3, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    others = [
        PreTrainedTokenizerFast(tokenizer_object=backend),
        edited(tokenizer, normalizer={"type": "Lowercase"}),
        edited(tokenizer, pre_tokenizer={"type": "Whitespace"}),
        edited(
            tokenizer,
            post_processor={
                "type": "RobertaProcessing",
                "sep": ["[SEP]", 102],
                "cls": ["[CLS]", 101],
                "trim_offsets": True,
                "add_prefix_space": False,
            },
        ),  # fmt: skip
    ]
    for other in others:
        assert compiled_wordpiece(other, other.backend_tokenizer) is None
        assert _token_ids(other, ADVERSARIAL) == _backend_ids(_unpadded(other, other.backend_tokenizer), ADVERSARIAL)


def test_encode_is_the_same_with_and_without_the_compiled_tokenizer(tokenizer, glue_texts, monkeypatch):
    model = CMOWModel(CMOWConfig()).eval()
    texts = glue_texts[-3000:] + ADVERSARIAL
    unpadded = _unpadded(tokenizer, tokenizer.backend_tokenizer)
    texts = [text for text in texts if text.strip() and len(_backend_ids(unpadded, [text])[0]) > 2]
    compiled = [encode(model, tokenizer, texts), encode(model, tokenizer, texts[:1], batch_size=1)]
    monkeypatch.delitem(sys.modules, WORDPIECE_MODULE)
    assert compiled_wordpiece(tokenizer, tokenizer.backend_tokenizer) is None
    assert torch.equal(compiled[0], encode(model, tokenizer, texts))
    assert torch.equal(compiled[1], encode(model, tokenizer, texts[:1], batch_size=1))


def test_encode_still_refuses_texts_without_tokens_and_ids_outside_the_model(tokenizer):
    with pytest.raises(ValueError, match="no tokens besides the special ones"):
        encode(CMOWModel(CMOWConfig()), tokenizer, ["fine", "\x01\x7f"])
    small = CMOWModel(tiny_config())  # 99 tokens: the teacher's ids are larger
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        encode(small, tokenizer, ["a plain ascii sentence"])


def test_the_switched_off_extension_is_not_loaded():
    script = "import sys, cmow\nassert 'cmow._wordpiece' not in sys.modules\nprint('not loaded')\n"
    env = {**os.environ, "CMOW_NO_EXTENSION": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "not loaded" in result.stdout, result.stderr[-3000:]
    assert "compiled" not in result.stderr, "switched off on purpose: no warning"


NOT_BUILT_CHECK = script_without_extension(
    WORDPIECE_MODULE,
    """
from transformers import BertTokenizer
import cmow
from cmow.encode import _token_ids
tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])})
assert _token_ids(tokenizer, ["a b", "A"]) == [[2, 4, 1, 3], [2, 4, 3]]
print("backend OK")
""",
)


def test_without_the_built_tokenizer_cmow_warns_once_and_tokenizes_with_the_backend():
    result = subprocess.run([sys.executable, "-c", NOT_BUILT_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "backend OK" in result.stdout, result.stderr[-3000:]
    assert result.stderr.count("compiled tokenizer is not available") == 1, result.stderr[-3000:]
