"""The one text normaliser and scorer every test and benchmark uses (asr/wer.py)."""

from asr.wer import normalize, spell_numbers, wer, word_match


def test_wer_counts_words_after_normalising():
    assert normalize("Mr. Quilter's apostle, of the  middle-classes!") == ["mister", "quilter's", "apostle", "of",
                                                                          "the", "middle", "classes"]
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "a cat sat down") == 2 / 3  # one substitution, one insertion
    assert wer(["a b", "c d e"], ["a b", "c x"]) == 2 / 5  # corpus WER: edits over all reference words
    assert wer("seven of clubs", "7 of clubs") == 1 / 3  # WER itself scores what Whisper wrote, digits and all


def test_word_match_hears_numbers_as_spoken():
    """'The reply audio says the reply text': Whisper writes the spoken "seven" as "7", "$4.50" as "four fifty" ..."""
    assert word_match("Seven of the clubs.", "7 of the clubs.") == 1.0
    said = "our flight leaves at six forty five from gate twelve"
    assert word_match("Our flight leaves at 6:45 from gate 12.", said) == 1.0
    assert word_match("It costs $4.50.", "it costs four dollars and fifty cents") == 1.0
    assert word_match("the 21st of May", "the twenty first of may") == 1.0
    assert word_match("Seven of the clubs.", "7 at that. Wabs.") == 0.25  # still a miss where the words differ
    assert word_match("a b", "") == 0.0
    assert spell_numbers("3pm, 5-7 days, 20%") == "three pm, five to seven days, twenty percent"
