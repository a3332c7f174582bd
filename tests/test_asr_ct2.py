"""CTranslate2 model.bin reader/writer and the PyTorch Whisper it feeds (tiny.en weights, CPU)."""

import numpy as np
import pytest
import torch

from agent.models import require
from asr.ct2 import (CT2FormatError, load_whisper_dir, read_model_bin, save_whisper_dir, whisper_variables,
                     write_model_bin)
from asr.whisper import SHAPES, Whisper, WhisperDims, synthetic


@pytest.fixture(scope="module")
def tiny():
    d = require("whisper-tiny.en")
    spec, rev, variables = read_model_bin(d / "model.bin")
    dims, sd, cfg = load_whisper_dir(d)
    return d, spec, rev, variables, dims, sd


def test_header_and_shapes(tiny):
    _, spec, rev, v, dims, sd = tiny
    assert (spec, rev) == ("WhisperSpec", 3)
    assert dims == SHAPES["tiny.en"]
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # the alias
    assert v["encoder/conv1/weight"].dtype == np.float16
    model = Whisper(dims)
    assert set(model.state_dict()) == set(sd)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    for k, t in model.state_dict().items():
        assert t.shape == sd[k].shape, k


def test_qkv_split(tiny):
    _, _, _, v, dims, sd = tiny
    d = dims.n_audio_state
    for scope, ours in (("encoder/layer_2/self_attention", "encoder.blocks.2.attn"),
                        ("decoder/layer_1/self_attention", "decoder.blocks.1.attn")):
        w, b = v[f"{scope}/linear_0/weight"].astype(np.float32), v[f"{scope}/linear_0/bias"].astype(np.float32)
        assert w.shape == (3 * d, d)
        assert np.all(b[d:2 * d] == 0)  # the k bias CTranslate2 stores is zero
        np.testing.assert_array_equal(sd[f"{ours}.query.weight"].numpy(), w[:d])
        np.testing.assert_array_equal(sd[f"{ours}.key.weight"].numpy(), w[d:2 * d])
        np.testing.assert_array_equal(sd[f"{ours}.value.weight"].numpy(), w[2 * d:])
        np.testing.assert_array_equal(sd[f"{ours}.value.bias"].numpy(), b[2 * d:])
        assert f"{ours}.key.bias" not in sd
    kv = v["decoder/layer_3/attention/linear_1/weight"].astype(np.float32)  # cross-attention k|v
    np.testing.assert_array_equal(sd["decoder.blocks.3.cross_attn.key.weight"].numpy(), kv[:d])
    np.testing.assert_array_equal(sd["decoder.blocks.3.cross_attn.value.weight"].numpy(), kv[d:])


def test_write_inverts_read(tiny, tmp_path):
    d, _, _, v, dims, sd = tiny
    model = Whisper(dims)
    model.load_state_dict(sd)
    back, aliases = whisper_variables(model)
    assert set(back) | set(aliases) == set(v)
    for k, a in back.items():
        assert a.dtype == v[k].dtype and np.array_equal(a, v[k]), k
    write_model_bin(tmp_path / "model.bin", back, aliases)
    spec, rev, again = read_model_bin(tmp_path / "model.bin")
    assert (spec, rev) == ("WhisperSpec", 3) and all(np.array_equal(again[k], back[k]) for k in back)


def test_rejects_other_versions(tmp_path):
    (tmp_path / "model.bin").write_bytes((5).to_bytes(4, "little") + b"\x00" * 8)
    with pytest.raises(CT2FormatError, match="version 5"):
        read_model_bin(tmp_path / "model.bin")


def test_kv_cached_steps_equal_one_pass():
    """Decoding token by token through the static cache gives the logits of one full forward pass."""
    torch.manual_seed(0)
    small = WhisperDims(n_audio_state=64, n_audio_head=4, n_audio_layer=2, n_vocab=512, n_text_state=64,
                        n_text_head=4, n_text_layer=3)
    m = synthetic(small, seed=3)
    audio = m.encoder(torch.randn(2, 80, 400))
    tokens = torch.randint(0, 512, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    full_cache, step_cache = m.new_cache(2), m.new_cache(2)
    valid = torch.ones(2, audio.shape[1], dtype=torch.bool)
    m.decoder.set_cross(full_cache, audio, valid)
    m.decoder.set_cross(step_cache, audio, valid)
    with torch.no_grad():
        full = m.decoder(tokens, pos, full_cache)
        steps = torch.cat([m.decoder(tokens[:, t:t + 1], pos[:, t:t + 1], step_cache) for t in range(7)], 1)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


def test_synthetic_ct2_matches_ctranslate2(tiny, tmp_path):
    """Random weights written as model.bin: ctranslate2's greedy decode == ours (the mapping is exact)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from asr.decoding import DecodeOptions, GreedyDecoder, WhisperTokenizer

    d = tiny[0]
    out = save_whisper_dir(synthetic("tiny.en", seed=1), tmp_path / "syn", d)
    dims, sd, _ = load_whisper_dir(out)  # fp16 on disk: reload so both sides use the same values
    m = Whisper(dims)
    m.load_state_dict(sd)
    tok = WhisperTokenizer(d, dims.n_vocab)
    dec = GreedyDecoder(m.eval(), tok, DecodeOptions())
    x = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)) * 2
    dec.encode(x)
    ours = dec.decode(max_new=12)[0]
    ct = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32", intra_threads=2)
    theirs = ct.generate(ctranslate2.StorageView.from_array(x.numpy()), [tok.prompt], beam_size=1,
                         max_length=len(tok.prompt) + 100, return_no_speech_prob=True, suppress_tokens=[])[0]
    assert ours.tokens == theirs.sequences_ids[0][:12]
    assert abs(ours.no_speech_prob - theirs.no_speech_prob) < 1e-4
