"""Seq2seq metrics: edit distance, word and phoneme error rates on a
hand-computed example, BLEU and chrF as sacrebleu computes them with
several references per source."""
import pytest
import sacrebleu

from mingpt_c.errors import DataError, ShapeError
from mingpt_c.seq2seq.metrics import edit_distance, reference_streams, score


@pytest.mark.parametrize("a,b,d", [
    ("kitten", "sitting", 3),
    ("flaw", "lawn", 2),
    ("", "abc", 3),
    ("abc", "abc", 0),
    ("intention", "execution", 5),
    ("HH AH L OW".split(), "HH EH L OW".split(), 1),
    ("F IH SH".split(), "F IY SH IH Z".split(), 3),
])
def test_edit_distance(a, b, d):
    assert edit_distance(list(a), list(b)) == d
    assert edit_distance(list(b), list(a)) == d


# source by source: distance to the closest reference / that reference's length
HYPS = ["K AE T", "D AO G Z", "B ER D", "F IH SH"]
REFS = [["K AE T"],                   # exact: 0 / 3
        ["D AO G", "D AA G"],         # one insertion: 1 / 3 (the second is 2 away)
        ["B ER D Z", "B ER D"],       # exact match of the second: 0 / 3
        ["F IY SH IH Z"]]             # a substitution and two insertions: 3 / 5


def test_error_rates_by_hand():
    s = score(HYPS, REFS, symbols=True)
    assert s["n"] == 4
    assert s["wer"] == pytest.approx(2 / 4) and s["exact"] == pytest.approx(2 / 4)
    assert s["per"] == pytest.approx((0 + 1 + 0 + 3) / (3 + 3 + 3 + 5))
    # a tie between references: the first listed one counts
    assert score(["A B"], [["A", "A B C"]], symbols=True)["per"] == pytest.approx(1 / 1)
    assert score(["A B"], [["A B C", "A"]], symbols=True)["per"] == pytest.approx(1 / 3)
    # no error rates for text outputs
    assert set(score(HYPS, REFS)) == {"n", "bleu", "chrf"}


def test_error_rates_use_tokens_of():
    """Characters as the units: "kat" vs "cat" is 1 error in 3 characters."""
    s = score(["kat", "dog"], [["cat"], ["dog"]], tokens_of=list, symbols=True)
    assert s["wer"] == pytest.approx(0.5) and s["per"] == pytest.approx(1 / 6)
    # whitespace differences do not count with str.split
    assert score(["K  AE T "], [["K AE T"]], symbols=True)["wer"] == 0.0


SENTS = ["the cat sat on the mat and looked at the dog",
         "a quick brown fox jumps over the lazy dog today",
         "we measure translation quality with bleu and chrf scores"]


def test_identical_outputs_score_100():
    s = score(SENTS, [[t] for t in SENTS])
    assert s["bleu"] == pytest.approx(100.0) and s["chrf"] == pytest.approx(100.0)
    s = score(HYPS, [[h, "X Y"] for h in HYPS], symbols=True)
    assert s["wer"] == 0.0 and s["per"] == 0.0 and s["exact"] == 1.0 and s["chrf"] == pytest.approx(100.0)


def test_bleu_and_chrf_match_sacrebleu():
    hyps = ["the cat sat on a mat and looked at a dog",
            "a fast brown fox jumps over the lazy dog",
            "we measure quality with bleu scores"]
    refs = [[SENTS[0], "the cat was sitting on the mat looking at the dog"],
            [SENTS[1]],
            [SENTS[2], "quality is measured with bleu and chrf", "we score with bleu"]]
    streams = [[SENTS[0], SENTS[1], SENTS[2]],
               ["the cat was sitting on the mat looking at the dog", None, "quality is measured with bleu and chrf"],
               [None, None, "we score with bleu"]]
    assert reference_streams(refs) == streams
    s = score(hyps, refs)
    assert s["bleu"] == pytest.approx(sacrebleu.metrics.BLEU().corpus_score(hyps, streams).score)
    assert s["chrf"] == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(hyps, streams).score)
    # one reference each: sacrebleu's plain call
    one = score(hyps, [[r[0]] for r in refs])
    assert one["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score)
    assert 0 < one["bleu"] < s["bleu"] < 100        # more references, more matches
    # symbols: whitespace tokens as given (no 13a splitting of punctuation)
    sym = score(["AH0 B-C", "D E F G"], [["AH0 B-C"], ["D E F H"]], symbols=True)
    want = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(["AH0 B-C", "D E F G"], [["AH0 B-C", "D E F H"]])
    assert sym["bleu"] == pytest.approx(want.score)


def test_score_errors():
    with pytest.raises(ShapeError, match="2 outputs but 1"):
        score(["a", "b"], [["a"]])
    with pytest.raises(DataError, match="source 2 has no reference"):
        score(["a", "b"], [["a"], []])
    with pytest.raises(DataError, match="no outputs"):
        score([], [])
