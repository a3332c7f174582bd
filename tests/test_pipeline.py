"""The whole CPU pipeline with the real embedded-default models, on real speech."""

import asyncio
import threading

import numpy as np
import pytest
from speechdata import dev_set, splice_gaps

from agent import events as ev
from agent.audio import INTERNAL_RATE, load_audio, resample
from agent.config import Config
from agent.offline import converse
from agent.runtime import Runtime
from agent.session import Session
from agent.worker import Priority
from asr.wer import edit_distance, normalize, wer, word_match


@pytest.fixture(scope="module")
def rt():
    cfg = Config.load("cpu")
    cfg.llm.max_new_tokens = 40
    runtime = Runtime.load(cfg)
    yield runtime
    runtime.close()


def test_asr_dev_set_wer_tiny_en(rt, speech):
    rows = dev_set()
    hyps = [rt.asr.transcribe(load_audio(speech / r["file"])) for r in rows]
    score = wer([r["reference"] for r in rows], hyps)
    print(f"tiny.en WER on {len(rows)} dev clips: {score:.3f}")
    assert score <= 0.10


def test_pipeline_reply_audio_says_the_reply_text(rt, speech):
    conv = asyncio.run(converse(rt, [load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")]))
    assert len(conv.turns) == 1
    turn = conv.turns[0]
    assert word_match("Sunday is the best part of the week.", turn.transcript) >= 0.8
    assert turn.reply and not turn.interrupted
    heard = rt.asr.transcribe(resample(turn.reply_audio, rt.tts.sample_rate, INTERNAL_RATE))
    assert word_match(turn.reply, heard) >= 0.85, (turn.reply, heard)
    lat = turn.latency
    for stage in ("endpoint", "transcript", "llm_first_token", "first_phrase", "tts_first_audio", "audio_sent"):
        assert stage in lat.ms, stage
    stages = [lat.ms[s] for s in ("endpoint", "transcript", "llm_first_token", "first_phrase", "tts_first_audio")]
    assert stages == sorted(stages) and lat.v2v_ms > 0
    # the first audio left before the whole reply was generated when the reply has several phrases
    kinds = [type(e).__name__ for e in conv.events]
    assert kinds.index("ReplyAudio") < kinds.index("ReplyDone")


def test_multi_turn_prefills_only_new_tokens(rt, speech):
    clips = [load_audio(speech / "pocketsphinx_misc/goforward.wav"), load_audio(speech / "pocketsphinx_cards/001.wav")]
    rt.config.turn.pause_prefill, rt.config.turn.draft = False, False  # all prefill happens at the endpoint
    try:
        conv = asyncio.run(converse(rt, clips))
    finally:
        rt.config.turn.pause_prefill, rt.config.turn.draft = True, True
    assert len(conv.turns) == 2
    s = conv.session
    t1, t2 = conv.turns
    chat = rt.llm.chat
    n2 = len(chat.user_turn_ids(t2.transcript))
    # turn 2 prefilled exactly its user message (+ assistant header), not the history before it
    assert t2.latency.info["prefill_tokens"] == n2
    assert s.llm.s.stats.last_append_tokens <= n2 + len(chat.end_of_reply_ids())
    # and the cache holds exactly the conversation: system, user 1, reply 1, user 2, reply 2
    expect = list(rt.llm.system_ids)
    for m in s.history:
        if m["role"] == "user":
            expect += chat.user_turn_ids(m["content"])
    assert s.llm.n_tokens > len(expect)  # replies are in there too
    assert s.llm.s.tokens[: len(rt.llm.system_ids)] == rt.llm.system_ids
    asyncio.run(s.close())


def test_first_phrase_burst_gives_the_same_reply_in_one_worker_item(rt, speech):
    """[pipeline] first_phrase_burst: the first phrase generated after the endpoint is one LLM worker item, not one
    per token; the reply (greedy) and its phrases are the same, and so are the later, paced tokens."""
    clip = load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")
    rt.config.turn.pause_prefill, rt.config.turn.draft = False, False  # the first phrase is made after the endpoint
    turns, items = {}, {}
    try:
        for burst in (False, True):
            rt.config.pipeline.first_phrase_burst = burst
            rt.llm_pool.reset_stats()
            conv = asyncio.run(converse(rt, [clip]))
            turns[burst] = conv.turns[0]
            items[burst] = rt.llm_pool.label_stats()
            asyncio.run(conv.session.close())
    finally:
        rt.config.turn.pause_prefill, rt.config.turn.draft = True, True
        rt.config.pipeline.first_phrase_burst = False
    assert turns[True].transcript == turns[False].transcript
    assert turns[True].reply and turns[True].reply == turns[False].reply
    assert items[True]["urgent:phrase_burst"]["n"] == 1 and "urgent:phrase_burst" not in items[False]
    per_token = items[False]["urgent:ChatSession.generate_reply"]["n"]
    assert per_token >= 3  # the first phrase took several items without the burst ...
    assert items[True].get("urgent:ChatSession.generate_reply", {"n": 0})["n"] == 0  # ... and none with it
    assert not turns[True].interrupted and turns[True].latency.v2v_ms > 0


def test_baseline_reprefills_history(rt, speech):
    rt.config.pipeline.reuse_kv = False
    try:
        clips = [load_audio(speech / "pocketsphinx_misc/goforward.wav"), load_audio(speech / "pocketsphinx_cards/001.wav")]
        conv = asyncio.run(converse(rt, clips))
    finally:
        rt.config.pipeline.reuse_kv = True
    t2 = conv.turns[1]
    assert t2.latency.info["prefill_tokens"] > len(rt.llm.chat.user_turn_ids(t2.transcript)) + 5


async def speak(s: Session, audio: np.ndarray, frame: int = 320) -> None:
    """Feed a clip in real time, 20 ms at a time."""
    for i in range(0, len(audio), frame):
        await s.feed(audio[i:i + frame])
        await asyncio.sleep(0.02)


async def silence(s: Session, frames: int, until=lambda: False, frame: int = 320) -> None:
    """Feed up to `frames` 20 ms frames of silence in real time, stopping once `until()` holds."""
    for _ in range(frames):
        await s.feed(np.zeros(frame, np.float32))
        await asyncio.sleep(0.02)
        if until():
            return


def run_long_reply(rt, scenario):
    """asyncio.run(scenario()) with replies of up to 60 tokens (long enough to talk over), then back to 40."""
    rt.config.llm.max_new_tokens = 60
    try:
        return asyncio.run(scenario())
    finally:
        rt.config.llm.max_new_tokens = 40


def test_barge_in_keeps_only_what_was_played(rt, speech):
    """Timeline: a question; silence until the reply has played ~0.8 s; the user talks over it."""
    async def scenario():
        s = Session(rt, INTERNAL_RATE)
        await s.start()
        q = load_audio(speech / "speechbrain_misc/single-mic-example1.wav")
        interrupt = load_audio(speech / "speechbrain_harvard/spk2_snt4.wav")
        got: list = []
        first_audio = None
        frame = 320

        async def pump():
            nonlocal first_audio
            while True:
                e = await s.events.get()
                got.append(e)
                if isinstance(e, ev.ReplyAudio):
                    first_audio = first_audio or asyncio.get_running_loop().time()
                    s.audio_sent(len(e.audio))

        task = asyncio.create_task(pump())
        loop = asyncio.get_running_loop()
        await speak(s, q)
        while first_audio is None or loop.time() - first_audio < 0.8:
            await s.feed(np.zeros(frame, np.float32)); await asyncio.sleep(0.02)
        await speak(s, interrupt)
        # silence: the interruption becomes the next turn
        await silence(s, 150, until=lambda: sum(isinstance(e, ev.ReplyDone) for e in got) >= 2)
        task.cancel()
        return s, got

    s, got = run_long_reply(rt, scenario)
    flush = [e for e in got if isinstance(e, ev.Flush)]
    assert len(flush) == 1
    # the flush goes out at the barge-in, not after the reply task has wound down (its current LLM step / TTS call,
    # the KV bookkeeping: ~0.25 s on a 2-core box), and no audio of that reply follows it
    k = got.index(flush[0])
    done1 = next(e for e in got if isinstance(e, ev.ReplyDone) and e.turn == 1)
    if done1.interrupted:  # the reply task was still running at the barge-in (else it had ended before it)
        assert k < got.index(done1)
    assert not [e for e in got[k:] if isinstance(e, ev.ReplyAudio) and e.turn == 1]
    full = [e for e in got if isinstance(e, ev.ReplyDone)][0]
    first = [e for e in got if isinstance(e, ev.ReplyTruncated)][0]
    assert first.turn == full.turn == 1
    assert len(first.text) < len(full.text) and full.text.startswith(first.text)
    assert 0 < first.played_samples < sum(len(e.audio) for e in got if isinstance(e, ev.ReplyAudio) and e.turn == 1)
    assert s.history[1] == {"role": "assistant", "content": first.text}
    # word-accurate: the history holds the words the listener heard (ASR of the played audio), +- one word
    played = np.concatenate([e.audio for e in got if isinstance(e, ev.ReplyAudio) and e.turn == 1])
    heard = rt.asr.transcribe(resample(played[: first.played_samples], rt.tts.sample_rate, INTERNAL_RATE))
    assert abs(words_heard(heard, full.text) - len(normalize(first.text))) <= 1, (heard, first.text)
    # the KV cache agrees with the history: system, user 1, the kept reply tokens, end of reply, user 2 ...
    chat = rt.llm.chat
    head = list(rt.llm.system_ids) + chat.user_turn_ids(s.history[0]["content"])
    toks = s.llm.s.tokens
    assert toks[: len(head)] == head
    eor = chat.end_of_reply_ids()
    end = next(i for i in range(len(head), len(toks)) if toks[i:i + len(eor)] == eor)
    assert " ".join(rt.llm.decode(toks[len(head):end]).split()) == " ".join(first.text.split())
    asyncio.run(s.close())


def test_a_reply_nobody_heard_leaves_the_turn_open(rt, speech):
    """The caller talks on right after the endpoint, before any reply audio was played (a false cut-off caught at
    once): the cut-off reply leaves no trace, and the next reply answers both parts as one user message."""
    async def scenario():
        s = Session(rt, INTERNAL_RATE)
        await s.start()
        q = load_audio(speech / "pocketsphinx_misc/goforward.wav")
        more = load_audio(speech / "speechbrain_harvard/spk2_snt4.wav")
        got: list = []

        async def pump():  # a transport that never plays anything: the listener hears nothing
            while True:
                got.append(await s.events.get())

        task = asyncio.create_task(pump())
        await speak(s, q)
        await silence(s, 100, until=lambda: any(isinstance(e, ev.SpeechStopped) for e in got))
        await speak(s, more)
        await silence(s, 300, until=lambda: any(isinstance(e, ev.ReplyDone) and not e.interrupted for e in got))
        task.cancel()
        return s, got

    s, got = run_long_reply(rt, scenario)
    assert any(isinstance(e, ev.Flush) for e in got)  # the barge-in happened
    cut = next(e for e in got if isinstance(e, ev.ReplyTruncated))
    assert cut.turn == 1 and cut.text == "" and cut.played_samples == 0
    answer = next(e for e in got if isinstance(e, ev.ReplyDone) and not e.interrupted)
    finals = [e.text for e in got if isinstance(e, ev.TranscriptEvent) and e.final]
    assert len(finals) == 2 and all(finals)
    # one user message (both parts) and the one reply: the cut-off turn left nothing in the history...
    assert s.history == [{"role": "user", "content": " ".join(finals)}, {"role": "assistant", "content": answer.text}]
    # ... nor in the KV cache: system prompt, the joined user message, the reply
    chat = rt.llm.chat
    head = list(rt.llm.system_ids) + chat.user_turn_ids(" ".join(finals))
    assert s.llm.s.tokens[: len(head)] == head
    asyncio.run(s.close())


def words_heard(heard: str, reply: str) -> int:
    """How many words of `reply` the ASR transcript of the played audio covers (matched letter by letter, so
    'can use lid' still counts as 'canoe slid')."""
    letters = list("".join(normalize(heard)))
    words = normalize(reply)
    dists = [edit_distance(letters, list("".join(words[:k]))) for k in range(len(words) + 1)]
    return dists.index(min(dists))


def test_typed_input_manual_turns_and_instructions(rt, speech):
    async def scenario():
        s = Session(rt, INTERNAL_RATE, auto_respond=False)
        await s.start()
        got = []
        r = await s.add_user_text("What is the capital of France?", respond=False)
        await r.task
        assert s.pending_user == ["What is the capital of France?"] and not s.history
        r = await s.respond()
        await r.task
        while not s.events.empty():
            got.append(s.events.get_nowait())
        await s.set_instructions("You are a pirate. Answer briefly.")
        toks = list(s.llm.s.tokens)
        await s.close()
        return s, got, toks

    s, got, toks = asyncio.run(scenario())
    done = [e for e in got if isinstance(e, ev.ReplyDone)]
    assert len(done) == 1 and "paris" in done[0].text.lower()
    sys_ids = rt.llm.chat.system_ids("You are a pirate. Answer briefly.")
    assert toks[: len(sys_ids)] == sys_ids
    assert toks[len(sys_ids):len(sys_ids) + 3] == rt.llm.chat.user_turn_ids("What is the capital of France?")[:3]


def test_audio_judge_without_llm_p_end_gives_the_endpoint(rt, speech):
    """[turn] judge on, llm_p_end off (what a run with synthetic LLM weights uses): the audio judge alone sets the
    endpoint delay, and the turn is answered."""
    from agent.turn import TurnParams, endpoint_delay

    assert rt.judge is not None  # configs/cpu.toml turns it on
    t = rt.config.turn
    t.llm_p_end = False
    try:
        conv = asyncio.run(converse(rt, [load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")]))
    finally:
        t.llm_p_end = True
    turn = conv.turns[0]
    info = turn.latency.info
    assert "p_audio" in info and turn.reply, info
    params = TurnParams(min_delay_s=t.min_delay_ms / 1000, max_delay_s=t.max_delay_ms / 1000,
                        unknown_delay_s=t.unknown_delay_ms / 1000, judge_p_low=t.judge_p_low,
                        judge_p_high=t.judge_p_high, judge_alone=t.judge_alone)
    assert info["endpoint_delay_ms"] == round(endpoint_delay(params, None, info["p_audio"]) * 1000)
    # a finished sentence ("Sunday is the best part of the week."): the judge hears it (measured 0.94-0.98)
    assert info["p_audio"] > t.judge_p_low and info["endpoint_delay_ms"] <= t.unknown_delay_ms
    asyncio.run(conv.session.close())


def test_judge_runs_before_the_pause_when_judge_after_ms_is_shorter(rt, speech):
    """[turn] judge_after_ms below pause_ms: the judge runs on the silence before any PAUSE (it needs no
    transcript), so a sure verdict ends the turn before the pause-time work would even start. Here the PAUSE is
    moved to 400 ms: the turn must end with the judge's verdict and without a pause."""
    t = rt.config.turn
    saved = t.pause_ms, t.judge_after_ms
    t.pause_ms, t.judge_after_ms = 400, 32
    try:
        # "in being comparatively modern.": P(complete) 0.99 at every silence length (bench/pause_judge.py)
        conv = asyncio.run(converse(rt, [load_audio(speech / "ljspeech/LJ001-0002.wav")]))
    finally:
        t.pause_ms, t.judge_after_ms = saved
    info = conv.turns[0].latency.info
    assert info.get("p_audio", 0) >= t.judge_p_high, info
    assert "pause_ms" not in info and info["endpoint_delay_ms"] == t.min_delay_ms, info
    assert 32 <= info["judge_ms"] < 400, info  # the verdict came from the silence's first frames
    assert conv.turns[0].reply
    asyncio.run(conv.session.close())


def test_draft_early_drafts_without_any_verdict(rt, speech):
    """[turn] draft_early (GPU configs): the pause drafts as soon as its transcript is in, without waiting for the
    judge's or the LLM's verdict; with neither verdict (judge off, llm_p_end off) no draft is made otherwise.
    Without verdicts the endpoint waits unknown_delay_ms: 3 s here, so that the pause's transcript (on which the
    draft starts) is in by then even on 2 loaded cores (with the configured 800 ms it sometimes was not)."""
    t = rt.config.turn
    judge, rt.judge = rt.judge, None
    t.llm_p_end = False
    unknown, t.unknown_delay_ms = t.unknown_delay_ms, 3000
    clip = load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")
    try:
        drafted = {}
        for early in (False, True):
            t.draft_early = early
            conv = asyncio.run(converse(rt, [clip]))
            turn = conv.turns[0]
            assert turn.reply
            drafted[early] = bool(turn.latency.info.get("drafted"))
            if drafted[early]:  # the draft's own timeline, ms after the end of speech, in order
                dm = turn.latency.info["draft_ms"]
                assert {"fork", "prefill", "first_token", "phrase", "audio", "taken"} <= set(dm), dm
                assert dm["fork"] <= dm["prefill"] <= dm["first_token"] <= dm["phrase"] <= dm["audio"], dm
            asyncio.run(conv.session.close())
    finally:
        rt.judge, t.llm_p_end, t.draft_early, t.unknown_delay_ms = judge, True, False, unknown
    assert drafted == {False: False, True: True}


def _spliced_with_every_silence_ending_the_turn(rt, speech, clip, variants: dict) -> dict:
    """The clip with 600 ms of silence spliced in at the v2v benchmark's word gap (bench/splice_points.json),
    conversed once per variant ([turn] settings), with every silence of 200 ms ending the turn whatever the audio
    judge says: only the check of the words can keep the turn open. -> variant -> (turns, SpeechStopped events)."""
    gap = splice_gaps()[clip]
    audio = load_audio(speech / clip)
    cut = int(gap * INTERNAL_RATE)
    spliced = np.concatenate([audio[:cut], np.zeros(int(0.6 * INTERNAL_RATE), np.float32), audio[cut:]])
    t = rt.config.turn
    keys = ["unknown_delay_ms", "min_delay_ms", "judge_p_low", "judge_p_high"]
    keys += sorted({k for over in variants.values() for k in over})
    old = {k: getattr(t, k) for k in keys}
    outcome = {}
    try:
        t.unknown_delay_ms = t.min_delay_ms = 200  # every silence of 200 ms ends the turn, verdict or not ...
        t.judge_p_low, t.judge_p_high = -1.0, 0.0  # ... (any verdict counts as "finished")
        for name, over in variants.items():
            for k, v in over.items():
                setattr(t, k, v)
            conv = asyncio.run(converse(rt, [spliced], gap_s=1.0))
            outcome[name] = (conv.turns, [e for e in conv.events if isinstance(e, ev.SpeechStopped)])
    finally:
        for k, v in old.items():
            setattr(t, k, v)
    return outcome


def test_an_endpoint_whisper_doubts_is_taken_back(rt, speech):
    """A caller pauses 600 ms inside "Feels like these days | go on forever", and the silence alone calls the turn
    over. tiny.en's transcript of the pause reads as finished ("Feels like these days", nothing trails off), but
    Whisper's own P(end of text) after "days" is low (`[turn] asr_end_min_p`): the endpoint does not hold, and the
    sentence is one turn with one answer. With the rule off (0) the fragment is answered: the case is real. This
    splice was the v2v benchmark's last false cut-off on the CPU (the audio judge is sure of it: P 0.98)."""
    min_p = rt.config.turn.asr_end_min_p
    assert min_p > 0 and rt.config.turn.confirm_endpoint
    outcome = _spliced_with_every_silence_ending_the_turn(rt, speech, "pocketsphinx_misc/forever_input_2_16k.wav",
                                                          {"on": {"asr_end_min_p": min_p},
                                                           "off": {"asr_end_min_p": 0.0}})
    turns, stops = outcome["on"]
    assert len(turns) == 1 and len(stops) == 1, [x.transcript for x in turns]
    assert "forever" in normalize(turns[0].transcript), turns[0].transcript
    assert turns[0].reply and not turns[0].interrupted
    rejected = turns[0].latency.info.get("endpoints_rejected", [])  # the trace says which check took it back
    assert any(r["why"] == "asr_p_end" and r["asr_p_end"] < min_p for r in rejected), turns[0].latency.info
    turns, stops = outcome["off"]
    assert len(turns) >= 2 and len(stops) >= 2, [x.transcript for x in turns]  # the fragment was answered


def test_an_endpoint_whose_transcript_trails_off_is_taken_back(rt, speech):
    """A caller pauses 600 ms mid-list ("Eight of spades, four of | clubs, ..."), and the silence alone calls the
    turn over. The words then get the last say: tiny.en's transcript of that pause trails off ("... four of cl..."),
    so the endpoint does not hold, the caller goes on, and the whole list is one turn with one answer. The same
    session with `confirm_endpoint` off answers the fragment: the case is real."""
    outcome = _spliced_with_every_silence_ending_the_turn(rt, speech, "pocketsphinx_cards/005.wav",
                                                          {"on": {"confirm_endpoint": True},
                                                           "off": {"confirm_endpoint": False}})
    turns, stops = outcome["on"]
    assert len(turns) == 1 and len(stops) == 1, [x.transcript for x in turns]
    words = normalize(turns[0].transcript)
    assert "spades" in words and words.index("spades") < len(words) - 3, turns[0].transcript  # the list goes on
    assert turns[0].reply and not turns[0].interrupted
    turns, stops = outcome["off"]
    assert len(turns) >= 2 and len(stops) >= 2  # without the check the fragment was answered (and barged into)


def test_the_judge_hears_the_same_audio_whatever_the_chunk_size(rt, speech, monkeypatch):
    """The audio judge is given the turn's audio up to the VAD frame whose silence reached judge_after_ms, not up
    to the last sample received: 20 ms and 50 ms client chunks (the VAD's frame is 32 ms) give it the same samples,
    so the same verdict. Its P moves with a few ms more or less of silence (perf-notes, "Fourteenth session")."""
    import agent.offline as offline

    clip = load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")
    heard = {}
    judge_p_end = rt.judge_p_end

    async def recording(audio):
        heard.setdefault(chunk, []).append(np.array(audio, copy=True))
        return await judge_p_end(audio)

    monkeypatch.setattr(rt, "judge_p_end", recording)
    for chunk in (0.02, 0.05):
        monkeypatch.setattr(offline, "FRAME_S", chunk)
        conv = asyncio.run(converse(rt, [clip], realtime=False))
        assert conv.turns and conv.turns[0].reply
        asyncio.run(conv.session.close())
    a, b = heard[0.02][0], heard[0.05][0]
    assert len(a) == len(b) and np.array_equal(a, b), (len(a), len(b))


def test_non_finite_input_samples_are_said_once_and_the_session_still_hears(rt, speech):
    """An embedder's float audio with NaN and infinity in it (conv.run_queues takes float32 chunks as they come):
    the session says so once (ErrorEvent "bad_audio"), hears those samples as silence, and the next question is
    answered. Without the guard (measured before it) the NaN samples went on with the turn's audio: the judge
    failed on them and Whisper's transcript of the question was "!"."""
    clip = load_audio(speech / "speechbrain_harvard/spk1_snt5.wav")

    async def scenario():
        s = Session(rt, INTERNAL_RATE)
        await s.start()
        got: list = []

        async def pump():
            while True:
                e = await s.events.get()
                got.append(e)
                if isinstance(e, ev.ReplyAudio):
                    s.audio_sent(len(e.audio))

        task = asyncio.create_task(pump())
        for bad in (np.nan, np.inf, -np.inf):
            x = np.zeros(320, np.float32)
            x[::7] = bad
            await s.feed(x)
            await asyncio.sleep(0.02)
        await silence(s, 10)
        await speak(s, clip)
        await silence(s, 200, until=lambda: any(isinstance(e, ev.ReplyDone) for e in got))
        task.cancel()
        await s.close()
        return s, got

    s, got = asyncio.run(scenario())
    errors = [e for e in got if isinstance(e, ev.ErrorEvent)]
    assert [e.code for e in errors] == ["bad_audio"] and not errors[0].fatal, errors
    assert s._non_finite == 3 * len(range(0, 320, 7))
    finals = [e for e in got if isinstance(e, ev.TranscriptEvent) and e.final]
    assert finals and wer("Sunday is the best part of the week.", finals[0].text) < 0.3, finals
    assert any(isinstance(e, ev.ReplyDone) and e.text for e in got)


def test_torch_tts_batches_sessions_replies_and_each_says_its_text(rt, speech):
    """[tts] backend torch with batch_steps: three callers at once; their replies' TTS steps queued together run as
    one batch on the TTS thread (held here until all three first steps are queued), and each reply's audio still
    says that reply's text."""
    from agent import models
    from tts.torch_backend import TorchPiperTTS

    # no sampling noise: the same audio every run, so what tiny.en hears back does not vary from run to run
    onnx_tts, tts = rt.tts, TorchPiperTTS(models.require("piper-joe-medium"), noise_scale=0.0, noise_w=0.0)
    rt.tts = tts
    rt.config.tts.backend, rt.config.tts.batch_steps = "torch", True  # (off by default)
    rt.config.llm.max_new_tokens = 24
    rt.config.turn.draft = False  # a draft's TTS call would wait behind the held thread, and its endpoint with it
    before = (rt.tts_pool.batches, rt.tts_pool.batched_items)
    clips = [load_audio(speech / f) for f in ("speechbrain_harvard/spk1_snt5.wav", "ljspeech/LJ001-0008.wav",
                                                "pocketsphinx_misc/goforward.wav")]

    gate = threading.Event()  # the TTS thread waits until every caller's first step is queued: one batch
    rt.tts_pool.submit_with(Priority.URGENT, gate.wait, 60.0)

    async def release():
        def steps_queued():
            return sum(n for k, n in rt.tts_pool.snapshot()["queued_by_label"].items() if k.endswith("TorchPiperTTS.step"))

        while steps_queued() < len(clips):
            await asyncio.sleep(0.01)
        gate.set()

    async def both():
        return (await asyncio.gather(release(), *(converse(rt, [c]) for c in clips)))[1:]

    try:
        convs = asyncio.run(both())
    finally:
        gate.set()
        rt.tts, rt.config.tts.backend, rt.config.llm.max_new_tokens = onnx_tts, "piper", 40
        rt.config.turn.draft, rt.config.tts.batch_steps = True, False
    batches, items = rt.tts_pool.batches - before[0], rt.tts_pool.batched_items - before[1]
    assert batches >= 1 and items >= len(clips), (batches, items, rt.tts_pool.label_stats())
    for conv in convs:
        (turn,) = conv.turns
        assert turn.reply and not turn.interrupted
        heard = rt.asr.transcribe(resample(turn.reply_audio, tts.sample_rate, INTERNAL_RATE))
        # tiny.en may drop the end of a reply cut off mid-sentence by the token budget: what it heard is the reply
        # from its start, and the audio is as long as the whole reply's
        said = " ".join(turn.reply.split()[:len(heard.split())])
        assert len(heard.split()) >= 5 and word_match(said, heard) >= 0.85, (turn.reply, heard)
        alone = len(tts.synthesize_full(turn.reply)[0])
        assert 0.75 * alone <= len(turn.reply_audio) <= 1.3 * alone, (len(turn.reply_audio), alone)
