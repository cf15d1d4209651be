"""Sampling, chunked prompt feeding, streaming decode and the generate command."""

from __future__ import annotations

import pytest
import torch

from rwkv_plug.models import load_model
from rwkv_plug.models.init import init_state_dict
from rwkv_plug.models.io import save_state_dict
from rwkv_plug.models.sampling import StreamDecoder, feed, generate, sample_logits



def small_model(vocab=300, seed=0):
    sd = init_state_dict(2, 64, vocab, seed=seed, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    return sd, load_model(sd).eval()


def test_temperature_zero_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample_logits(logits, temperature=0) == 1


def test_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    # cumulative 0.5, 0.8, ...: the first token whose cumulative mass exceeds 0.7 is index 1
    seen = {sample_logits(logits, 1.0, 0.7, g) for _ in range(300)}
    assert seen == {0, 1}
    assert {sample_logits(logits, 1.0, 0.4, g) for _ in range(100)} == {0}


def test_low_temperature_sharpens_and_seed_repeats():
    logits = torch.tensor([1.0, 0.9, 0.8])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    draws1 = [sample_logits(logits, 0.05, 1.0, g1) for _ in range(50)]
    draws2 = [sample_logits(logits, 0.05, 1.0, g2) for _ in range(50)]
    assert draws1 == draws2
    assert draws1.count(0) > 40  # p^(1/0.05) puts almost all mass on the top token


def test_chunked_prompt_feeding_gives_the_same_final_logits():
    _, model = small_model()
    ids = torch.randint(0, 300, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    whole, _ = feed(model, ids, chunk_len=1000)
    for chunk in (1, 7, 16):
        part, _ = feed(model, ids, chunk_len=chunk)
        assert torch.allclose(part, whole, atol=1e-4), chunk


def test_greedy_generation_matches_rerunning_the_whole_sequence():
    _, model = small_model()
    prompt = [5, 17, 42, 8, 99, 3, 250]
    got = generate(model, prompt, max_tokens=6, temperature=0, chunk_len=3)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):  # no state carried: the model sees the full sequence each time
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    assert got == seq[len(prompt):]
    assert generate(model, prompt, max_tokens=6, temperature=0) == got


def test_seeded_sampling_is_reproducible():
    _, model = small_model()
    a = generate(model, [1, 2, 3], max_tokens=8, temperature=1.0, top_p=0.9, seed=11)
    b = generate(model, [1, 2, 3], max_tokens=8, temperature=1.0, top_p=0.9, seed=11)
    assert a == b and len(a) == 8


def test_stream_decoder_holds_back_partial_utf8():
    table = {1: b"\xe6", 2: b"\x97", 3: b"\xa5", 4: b"ok"}  # 1+2+3 spell U+65E5

    def decode(ids):
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    stream = StreamDecoder(decode)
    assert [stream.push(t) for t in (4, 1, 2, 3, 4)] == ["ok", "", "", "\u65e5", "ok"]
    stream.push(1)
    assert stream.flush() == "\ufffd"  # an unfinished character at the end still shows


def test_generate_command_greedy_world(tmp_path, capsys):
    from rwkv_plug.core.cli import main
    from rwkv_plug.data.tokenizer import load_tokenizer

    sd = init_state_dict(1, 64, 65536, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    sd = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    save_state_dict(sd, tmp_path / "m.pth")
    tok = load_tokenizer("world", {})
    prompt = "Hello world"
    expected = generate(load_model(tmp_path / "m.pth").eval(), tok.encode(prompt), 5, temperature=0)

    main([
        "generate", str(tmp_path / "m.pth"), "--prompt", prompt,
        "--temperature", "0", "--max-tokens", "5", "--chunk-len", "1",
    ])
    out = capsys.readouterr().out
    assert out == prompt + tok.decode(expected) + "\n"


def test_generate_command_needs_a_tokenizer_for_odd_vocab(tmp_path, capsys):
    from rwkv_plug.core.cli import main

    sd, _ = small_model(vocab=300)
    save_state_dict(sd, tmp_path / "m.pth")
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(tmp_path / "m.pth"), "--prompt", "hi"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocab size 300" in err[0] and "--tokenizer" in err[0]


def test_generate_refuses_a_tokenizer_larger_than_the_model_and_warns_on_a_much_smaller_one(
        tmp_path, capsys, offline_data):
    from rwkv_plug.core.cli import main

    save_state_dict(init_state_dict(1, 64, 50277, seed=0), tmp_path / "neox.pth")
    with pytest.raises(SystemExit) as exc:  # "the cat" alone stays within 50277 ids
        main(["generate", str(tmp_path / "neox.pth"), "--prompt", "the cat", "--tokenizer", "world"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: tokenizer 'world' has 65536 ids but {tmp_path / 'neox.pth'} has vocab_size 50277; "
                   "pick the tokenizer the model was trained with (--tokenizer)"]

    save_state_dict(init_state_dict(1, 64, 65536, seed=0), tmp_path / "world.pth")
    main(["generate", str(tmp_path / "world.pth"), "--prompt", "the cat", "--tokenizer", "neox",
          "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert "warning: tokenizer 'neox' has 50277 ids but" in err and "made for another tokenizer" in err
