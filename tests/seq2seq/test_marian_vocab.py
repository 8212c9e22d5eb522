"""Marian vocabularies against transformers' MarianTokenizer: small
sentencepiece models trained here, a Marian-style vocab.json ("</s>" 0,
"<unk>" 1, the pieces, "<pad>" last), and the ids, decodings and files
compared on varied text (accents, unseen scripts, emoji, spaces, long
inputs, special tokens and language codes written in the text)."""
import json
import random
import warnings

import pytest

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from mingpt_c.errors import CheckpointError, IndexRangeError  # noqa: E402
from mingpt_c.seq2seq.marian_vocab import MarianVocab  # noqa: E402
from mingpt_c.seq2seq.vocab import Vocab  # noqa: E402

EN = ("the a cat dog sat on mat while dogs ran quickly over hills said John Mary why yes no maybe it's don't "
      "house garden water bread morning evening friend teacher asked advice small frog green river city "
      "people time year work school number world life hand part child eye woman place week case point").split()
FR = ("le la les chat chien été à où garçon très naïve Noël déjà ça coûte élève français maison jardin eau "
      "pain matin soir ami professeur demandé conseil petite grenouille verte rivière ville gens temps année "
      "travail école nombre monde vie main partie enfant œil femme lieu semaine cas point être avoir fenêtre").split()
OTHER = "über Müller Straße señor niño mañana España façade crème brûlée smörgåsbord".split()
PUNCT = list(",.!?;:()\"'-%€")


def corpus(seed: int, lang: tuple) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(400):
        words = []
        for _ in range(rng.randint(3, 14)):
            r = rng.random()
            if r < 0.1:
                words.append(str(rng.randint(0, 9999)))
            elif r < 0.2:
                words.append(rng.choice(OTHER))
            else:
                words.append(rng.choice(lang))
            if rng.random() < 0.15:
                words[-1] += rng.choice(PUNCT)
        lines.append(" ".join(words).capitalize())
    return lines


def train_spm(tmp, name: str, lines: list[str], size: int = 300, **options) -> bytes:
    (tmp / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp / f"{name}.txt"), model_prefix=str(tmp / name),
                                   vocab_size=size, model_type="unigram", character_coverage=1.0,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2, **options)
    return (tmp / f"{name}.model").read_bytes()


def marian_vocab_json(*models: bytes, drop=(), extra=()) -> dict:
    """Marian's layout: </s> 0, <unk> 1, the models' pieces, extra tokens, <pad> last."""
    v = {"</s>": 0, "<unk>": 1}
    for m in models:
        sp = spm.SentencePieceProcessor(model_proto=m)
        for i in range(sp.get_piece_size()):
            p = sp.id_to_piece(i)
            if not (sp.is_control(i) or sp.is_unknown(i)) and p not in v and p not in drop:
                v[p] = len(v)
    for p in extra:
        v[p] = len(v)
    v["<pad>"] = len(v)
    return v


def hf_tokenizer(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Recommended: pip install sacremoses."
        return transformers.MarianTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spm")
    src = train_spm(tmp, "src", corpus(1, tuple(EN)))
    tgt = train_spm(tmp, "tgt", corpus(2, tuple(FR)))
    assert src != tgt
    return src, tgt


def write_marian_dir(d, src: bytes, tgt: bytes, vocab: dict, target_vocab=None, config=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "source.spm").write_bytes(src)
    (d / "target.spm").write_bytes(tgt)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    cfg = {"source_lang": "en", "target_lang": "fr", "separate_vocabs": target_vocab is not None, **(config or {})}
    if target_vocab is not None:
        (d / "target_vocab.json").write_text(json.dumps(target_vocab), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def shared(models, tmp_path_factory):
    """A shared vocab.json over two different sentencepiece models, as
    opus-mt has; two pieces left out, so sentencepiece knows them but the
    vocabulary does not."""
    src, tgt = models
    sp = spm.SentencePieceProcessor(model_proto=src)
    drop = [sp.id_to_piece(i) for i in (40, 41)]
    d = write_marian_dir(tmp_path_factory.mktemp("shared"), src, tgt,
                         marian_vocab_json(src, tgt, drop=drop, extra=[">>fra<<", ">>spa<<"]))
    return d, hf_tokenizer(d), drop


LONG = " ".join(corpus(7, tuple(EN + FR))[:120]) + " 你好世界 😀 " * 20

TEXTS = [
    "The cat sat on the mat.",
    "Le garçon a mangé 3 pommes, déjà à 12h30 !",
    "Über den Müller: señor niño, mañana en España.",
    "naïve café — 12,50 € (déjà) « oui » l'élève n'a pas",
    "  leading,  trailing   and    repeated   spaces   ",
    "",
    " ",
    "\t\n \u3000",
    "x",
    "你好，世界 😀🚀 ok",
    "ﬁ ＡＢＣ １２３ ½ Ⅳ",                       # NFKC folds these
    "e\u0301te\u0301 composed été",                  # combining accents
    "Straße ÆØÅ ŁŻ Ğ ß",
    ">>fra<< Le chat",
    ">>fra<<le chat",
    ">>spa<<",
    ">>xx yy<< hello",                               # an unknown code, spaces and all
    "hello >>fra<< inside",
    "a </s> b <pad>c<unk>",
    "<unk>",
    "</s>>>fra<< after a special",
    "<pad> <pad>",
    "<<>> <<fra>> >> <<",
    "tab\tseparated\tand\nnew\nlines",
    "0123456789 3.14 -42 1,000,000 99%",
    LONG,
]


def ids_of(tok, text, target=False):
    return tok(text_target=text)["input_ids"] if target else tok(text)["input_ids"]


def hf_decode(tok, ids, eos=0):
    """MarianTokenizer's decoding of ids up to the first </s> (which it would skip, not stop at)."""
    return tok.decode(ids[:ids.index(eos)] if eos in ids else ids, skip_special_tokens=True)

# ------------------------------------------------------------------ ids


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_source_and_target_ids_match_marian_tokenizer(shared, text):
    d, tok, _ = shared
    src, tgt = MarianVocab.from_dir(d, "source"), MarianVocab.from_dir(d, "target")
    for v, target in ((src, False), (tgt, True)):
        want = ids_of(tok, text, target)
        assert want[-1] == v.eos_id
        assert v.encode(text) == want[:-1], (v.side, text[:60])


def test_the_two_sides_tokenize_differently(shared):
    d, tok, _ = shared
    src, tgt = MarianVocab.from_dir(d, "source"), MarianVocab.from_dir(d, "target")
    differ = [t for t in TEXTS if src.encode(t) != tgt.encode(t)]
    assert len(differ) >= 5   # else the target path would not be tested


def test_random_text_matches_marian_tokenizer(shared):
    """Fragments that make special tokens, language codes and their near misses."""
    d, tok, _ = shared
    src, tgt = MarianVocab.from_dir(d, "source"), MarianVocab.from_dir(d, "target")
    frags = ["<pad>", "</s>", "<unk>", ">>", "<<", ">>fra<<", "fra", " ", "  ", "\t", "é", "ü", "ñ", "你", "😀",
             "le", "chat", "the", ".", ",", "1", "42", "<", ">", "/s", "s>", "unk", "ﬁ", "Ａ"]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(frags) for _ in range(rng.randint(0, 12)))
        assert src.encode(text) == ids_of(tok, text)[:-1], repr(text)
        assert tgt.encode(text) == ids_of(tok, text, True)[:-1], repr(text)


def test_pieces_missing_from_the_vocabulary_are_unk(shared):
    d, tok, drop = shared
    v = MarianVocab.from_dir(d)
    for piece in drop:
        text = piece.replace("▁", " ")
        assert piece in v.pieces(text) and v.unk_id in v.encode(text)
        assert v.encode(text) == ids_of(tok, text)[:-1]
    assert v.unknown("你好 😀") == [] and v.encode("你好")[-1] == v.unk_id


def test_special_ids_are_marian_s(shared, tmp_path):
    d, tok, _ = shared
    v = MarianVocab.from_dir(d)
    assert (v.eos_id, v.unk_id, v.pad_id) == (tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == \
        (0, 1, v.size - 1)
    assert v.bos_id == v.pad_id and v.src_eos is True and v.kind == "marian"
    assert v.size == tok.vocab_size and v.language_codes == [">>fra<<", ">>spa<<"]
    # the model's config.json says where the decoder starts
    for f in ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"decoder_start_token_id": 5}))
    assert MarianVocab.from_dir(tmp_path, "target").bos_id == 5
    # the other kinds keep 0..3 and no </s> on sources
    c = Vocab.build(["abc"], "char")
    assert (c.pad_id, c.bos_id, c.eos_id, c.unk_id, c.src_eos) == (0, 1, 2, 3, False)

# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize("side", ["source", "target"])
def test_decode_matches_marian_tokenizer(shared, side):
    """Shared vocabularies decode with source.spm on both sides, as transformers does."""
    d, tok, _ = shared
    v = MarianVocab.from_dir(d, side)
    for text in TEXTS:
        ids = v.encode(text)
        want = hf_decode(tok, ids)   # "</s>" may be written in the text
        assert v.decode(ids) == want, repr(text[:60])
        assert v.decode(ids + [v.eos_id] + ids) == want          # stops at </s>
        assert v.decode([v.pad_id] + ids + [v.pad_id]) == want   # skips padding
    rng = random.Random(1)
    for _ in range(100):   # any ids, <unk> included (it vanishes)
        ids = [rng.randrange(v.size) for _ in range(rng.randint(0, 30))]
        ids = [i for i in ids if i not in (v.eos_id, v.pad_id)]
        assert v.decode(ids) == tok.decode(ids, skip_special_tokens=True), ids


def test_decode_round_trip_of_normalised_text(shared):
    d, tok, _ = shared
    v = MarianVocab.from_dir(d)
    for text in ["The dog sat on the mat.", "Le garçon a mangé 3 pommes, déjà à 12h30 !", "über señor niño 42"]:
        assert v.unk_id not in v.encode(text) and v.decode(v.encode(text)) == text
    assert v.decode(v.encode("a green cat")) == "a"   # pieces left out of vocab.json: <unk>, skipped
    assert v.decode(v.encode("  spaced   out  ")) == "spaced out"
    assert v.decode(v.encode("ﬁ １２")) == "fi 12"


def test_symbols_are_the_pieces(shared):
    d, tok, _ = shared
    v = MarianVocab.from_dir(d)
    ids = v.encode(TEXTS[1]) + [v.eos_id, v.pad_id, v.unk_id]
    assert v.symbols(ids) == tok.convert_ids_to_tokens(ids)
    assert all(s.isprintable() for s in v.symbols(range(v.size)))
    assert v.tokens_of(" le  chat ") == ["le", "chat"]


def test_bad_ids_raise(shared):
    v = MarianVocab.from_dir(shared[0])
    for bad in ([v.size], [-1]):
        with pytest.raises(IndexRangeError, match="outside the marian"):
            v.decode(bad)
        with pytest.raises(IndexRangeError):
            v.symbols(bad)

# ------------------------------------------------------------------ files


def test_save_load_and_json_round_trips(shared, tmp_path):
    d, tok, _ = shared
    for side in ("source", "target"):
        v = MarianVocab.from_dir(d, side)
        v.save(tmp_path / f"{side}.json")
        a = Vocab.load(tmp_path / f"{side}.json")        # Vocab.load dispatches on the kind
        b = MarianVocab.load(tmp_path / f"{side}.json")
        c = Vocab.from_json(json.loads(json.dumps(v.to_json())))
        for w in (a, b, c):
            assert isinstance(w, MarianVocab) and w.side == side and w.size == v.size
            assert [w.encode(t) for t in TEXTS] == [v.encode(t) for t in TEXTS]
            assert w.decode(v.encode(TEXTS[2])) == v.decode(v.encode(TEXTS[2]))
            assert (w.pad_id, w.bos_id, w.eos_id, w.unk_id) == (v.pad_id, v.bos_id, v.eos_id, v.unk_id)
        assert v.for_side("target" if side == "source" else "source").for_side(side).to_json() == v.to_json()


def test_write_dir_loads_in_marian_tokenizer(shared, tmp_path):
    d, tok, _ = shared
    v = MarianVocab.from_dir(d, "target")
    v.write_dir(tmp_path / "out")
    again = hf_tokenizer(tmp_path / "out")
    for text in TEXTS:
        assert ids_of(again, text) == ids_of(tok, text)
        assert ids_of(again, text, True) == ids_of(tok, text, True)
    w = MarianVocab.from_dir(tmp_path / "out", "target")
    assert w.to_json() == v.to_json()
    assert all(str(tmp_path) not in line for line in (tmp_path / "out" / "tokenizer_config.json").open())


def test_bad_files_raise(shared, tmp_path, models):
    d, tok, _ = shared
    v = MarianVocab.from_dir(d)
    obj = v.to_json()
    with pytest.raises(CheckpointError, match="base64"):
        Vocab.from_json(dict(obj, source_spm="not base64!"))
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        Vocab.from_json(dict(obj, source_spm="aGVsbG8="))
    with pytest.raises(CheckpointError, match="no pad_token"):
        Vocab.from_json(dict(obj, vocab={k: i for k, i in obj["vocab"].items() if k != "<pad>"}))
    with pytest.raises(CheckpointError, match="each once"):
        Vocab.from_json(dict(obj, vocab=dict(obj["vocab"], extra=10 ** 6)))
    with pytest.raises(CheckpointError, match="not a marian one"):
        MarianVocab.from_json(Vocab.build(["abc"], "char").to_json())
    with pytest.raises(CheckpointError, match="vocab.json"):
        MarianVocab.from_dir(tmp_path)

# ------------------------------------------------------------------ other layouts


def test_separate_vocabularies(models, tmp_path):
    """separate_vocabs: target_vocab.json numbers the target's pieces, and
    decoding uses target.spm with it."""
    src, tgt = models
    d = write_marian_dir(tmp_path, src, tgt, marian_vocab_json(src), marian_vocab_json(tgt, extra=["extra"]))
    tok = hf_tokenizer(d)
    s, t = MarianVocab.from_dir(d, "source"), MarianVocab.from_dir(d, "target")
    assert t.separate and t.size == len(json.loads((d / "target_vocab.json").read_text())) != s.size
    assert t.pad_id == t.size - 1 != s.pad_id
    for text in TEXTS:
        assert s.encode(text) == ids_of(tok, text)[:-1]
        assert t.encode(text) == ids_of(tok, text, True)[:-1]
        ids = t.encode(text)
        assert t.decode(ids) == hf_decode(tok, ids)
    t.write_dir(tmp_path / "out")
    again = hf_tokenizer(tmp_path / "out")
    assert [ids_of(again, x, True) for x in TEXTS] == [ids_of(tok, x, True) for x in TEXTS]


def test_extra_special_tokens_and_cleanup(models, tmp_path):
    """Extra special tokens are cut out of text and skipped when decoding;
    clean_up_tokenization_spaces is honoured."""
    src, tgt = models
    d = write_marian_dir(tmp_path, src, tgt, marian_vocab_json(src, tgt, extra=["<eop>"]),
                         config={"additional_special_tokens": ["<eop>"], "clean_up_tokenization_spaces": True})
    tok = hf_tokenizer(d)
    v = MarianVocab.from_dir(d, "target")
    for text in ["one<eop>two", "<eop> le chat . <eop>", "it 's done , isn't it ?"] + TEXTS:
        assert v.encode(text) == ids_of(tok, text, True)[:-1]
        assert v.decode(v.encode(text)) == hf_decode(tok, v.encode(text))
    assert v.encode("<eop>") == [v.stoi["<eop>"]] and v.decode(v.encode("a<eop>b")) == "a b"



def test_shared_vocabulary_decodes_targets_with_the_source_model(models, tmp_path):
    """With one vocab.json, MarianTokenizer.decode uses source.spm even for
    target ids. A byte-fallback target model shows it: its byte pieces
    would decode to bytes with target.spm but stay literal with source.spm."""
    src, _ = models
    tgt = train_spm(tmp_path, "bytes", corpus(3, tuple(FR)), size=600, byte_fallback=True)
    d = write_marian_dir(tmp_path / "d", src, tgt, marian_vocab_json(src, tgt))
    tok = hf_tokenizer(d)
    v = MarianVocab.from_dir(d, "target")
    ids = v.encode("le 你 chat")
    assert ids == ids_of(tok, "le 你 chat", True)[:-1]
    assert v.decode(ids) == hf_decode(tok, ids) == "le <0xE4><0xBD><0xA0> chat"
