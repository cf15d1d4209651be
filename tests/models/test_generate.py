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


# -- streaming text equals the tokenizer's own decode ------------------------
WORDS = "the cat sat on a mat and dog ran to see bird fly over tree by river light".split()


def word_level_tokenizer(folder):
    """A local HF word-level tokenizer: decode puts a space between tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))
    from rwkv_plug.data.tokenizer import load_tokenizer

    return load_tokenizer(str(folder), {})


def streamed(tok, prompt_ids, new_ids, notes=None):
    stream = StreamDecoder(tok.decode, context=prompt_ids, on_silent=None if notes is None else notes.append)
    pieces = [stream.push(i) for i in new_ids]
    return pieces, "".join(pieces) + stream.flush()


def test_word_level_stream_keeps_the_spaces_decode_puts_between_words(tmp_path):
    tok = word_level_tokenizer(tmp_path / "wl")
    prompt = tok.encode("the cat")
    new = tok.encode("sat on a mat")
    pieces, text = streamed(tok, prompt, new)
    assert pieces == [" sat", " on", " a", " mat"]
    assert "the cat" + text == tok.decode(prompt + new) == "the cat sat on a mat"
    # a long run decodes a sliding window of ids and still prints exactly decode(all)
    stream = StreamDecoder(tok.decode, context=prompt)
    stream.WINDOW, stream.KEEP = 8, 2
    many = [1 + (i * 7) % len(WORDS) for i in range(60)]
    text = "".join(stream.push(i) for i in many) + stream.flush()
    assert len(stream.ids) <= 9 and "the cat" + text == tok.decode(prompt + many)


@pytest.mark.parametrize("name", ["world", "neox"])
def test_byte_tokenizers_stream_exactly_their_decode(name, offline_data):
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = load_tokenizer(name, {})
    prompt = tok.encode("Hello")
    new = tok.encode(" wörld 😀 日本語! ok")
    assert any("\ufffd" in tok.decode(new[: i + 1]) for i in range(len(new)))  # byte tokens cut characters
    pieces, text = streamed(tok, prompt, new)
    assert tok.decode(prompt) + text == tok.decode(prompt + new) == "Hello wörld 😀 日本語! ok"
    assert all("\ufffd" not in p for p in pieces)


def test_ids_that_decode_to_nothing_are_said_once(tmp_path, offline_data):
    from rwkv_plug.data.tokenizer import load_tokenizer

    tok = word_level_tokenizer(tmp_path / "wl")
    notes: list[str] = []
    beyond = len(WORDS) + 5  # a model row the tokenizer has no token for: HF decodes it to ""
    pieces, text = streamed(tok, tok.encode("the"), [2, beyond, 3, beyond + 1], notes)
    assert text == " cat sat" and pieces[1] == pieces[3] == ""
    assert notes == [f"note: token id {beyond} decodes to no text with this tokenizer, so it prints nothing "
                     "(said once; the model still sees every id)"]
    world = load_tokenizer("world", {})  # world raises on ids outside its vocab: left out, said once
    notes.clear()
    pieces, text = streamed(world, world.encode("a"), [65535, *world.encode(" b c"), 65534], notes)
    assert text == " b c" and len(notes) == 1 and "token id 65535 cannot be decoded" in notes[0]


def test_generate_command_streams_a_word_level_tokenizers_decode(tmp_path, capsys, offline_data):
    from rwkv_plug.core.cli import main

    tok = word_level_tokenizer(tmp_path / "wl")
    sd = init_state_dict(1, 64, tok.vocab_size, seed=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    save_state_dict(sd, tmp_path / "m.pth")
    prompt = "the cat"
    ids = tok.encode(prompt)
    expected = generate(load_model(tmp_path / "m.pth").eval(), ids, 8, temperature=0)
    main(["generate", str(tmp_path / "m.pth"), "--prompt", prompt, "--tokenizer", str(tmp_path / "wl"),
          "--temperature", "0", "--max-tokens", "8"])
    out = capsys.readouterr().out
    assert out == tok.decode(ids + expected) + "\n"
    assert len(out.split()) == 2 + len(expected)  # one word per id: nothing glued
