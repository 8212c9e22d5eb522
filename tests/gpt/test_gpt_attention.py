"""`mingpt attention`: a GPT's self-attention over a prompt, as a causal
token x token map, and its picture."""
import numpy as np

from conftest import invoke


def test_attention_map_is_causal_and_drawn(tmp_path):
    (tmp_path / "t.txt").write_text("to be or not to be, that is the question\n" * 30)
    res = invoke("train", tmp_path / "t.txt", "--out", tmp_path / "run", "--max-iters", "3", "--n-layer", "2",
                 "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2", "--eval-iters", "1",
                 "--no-progress", "--threads", "1")
    assert res.exit_code == 0, res.stderr
    from mingpt_c.gpt import checkpoint
    from mingpt_c.gpt.attention import self_attention
    from mingpt_c.gpt.model import GPT

    loaded = checkpoint.load(tmp_path / "run")
    model = GPT(loaded["cfg"], loaded["params"])
    ids = loaded["tokenizer"].encode("to be or not")
    for layer, head in ((None, None), (0, 1)):
        A = self_attention(model, ids, layer, head)
        assert A.shape == (len(ids), len(ids))
        np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-5)
        assert np.all(np.triu(A, 1) == 0)
    res = invoke("attention", tmp_path / "run", "--prompt", "to be or not", "--out", tmp_path / "map.png",
                 "--layer", "1", "--head", "2")
    assert res.exit_code == 0, res.stderr
    from PIL import Image

    with Image.open(tmp_path / "map.png") as im:
        assert im.size[0] > 100
