"""Chat formatting as token-id pieces, derived from the model's own chat template.

The pipeline builds a conversation incrementally in one KV session, so it needs the template cut into pieces:
    system_ids(text)    the system message
    user_turn_ids(text) a user message plus the assistant header (generation starts right after it)
    end_of_reply_ids()  what closes an assistant message (ChatML: "<|im_end|>\\n")
We render the template (via the tokenizer's apply_chat_template) for small probe conversations and take the
string differences, so any template that renders turns independently works (ChatML, Llama 3).
`end_of_turn_token_id` is the first token after the user's text in a user turn (ChatML: <|im_end|>); its
probability after a partial user message is the LLM's "the user is done" signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SYS, _USER, _REPLY = "\x01SYS\x01", "\x01USER\x01", "\x01REPLY\x01"  # markers that no template alters


def _render(tok, messages, gen: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


@dataclass
class ChatFormat:
    tokenizer: object
    system_tpl: tuple[str, str]  # text before / after the system content
    user_tpl: tuple[str, str]  # before / after the user content (the "after" ends with the assistant header)
    reply_end: str  # closes an assistant message
    _fixed: dict = field(default_factory=dict, repr=False, compare=False)  # template piece -> its ids

    @classmethod
    def from_tokenizer(cls, tok) -> "ChatFormat":
        sys_msg = [{"role": "system", "content": _SYS}]
        with_user = sys_msg + [{"role": "user", "content": _USER}]
        with_reply = with_user + [{"role": "assistant", "content": _REPLY}]
        r_sys = _render(tok, sys_msg, False)
        r_user = _render(tok, with_user, True)
        r_reply = _render(tok, with_reply, False)
        assert r_user.startswith(r_sys), "template does not render the system message independently"
        sys_before, sys_after = r_sys.split(_SYS)
        user_before, user_after = r_user[len(r_sys):].split(_USER)
        assert r_reply.startswith(r_user), "template does not render the assistant reply after its header"
        reply = r_reply[len(r_user):]
        assert reply.startswith(_REPLY), reply
        return cls(tok, (sys_before, sys_after), (user_before, user_after), reply[len(_REPLY):])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def system_ids(self, text: str) -> list[int]:
        return self._ids(self.system_tpl[0] + text + self.system_tpl[1])

    def user_turn_ids(self, text: str) -> list[int]:
        return self._ids(self.user_tpl[0] + text + self.user_tpl[1])

    def _piece(self, text: str) -> list[int]:
        """A fixed template piece, tokenized once (these are asked for on every turn and every reply)."""
        ids = self._fixed.get(text)
        if ids is None:
            ids = self._fixed[text] = self._ids(text)
        return list(ids)

    def user_open_ids(self) -> list[int]:
        """The user header alone (for appending a user message while it is still being spoken)."""
        return self._piece(self.user_tpl[0])

    def user_close_ids(self) -> list[int]:
        """Closes a user message opened with user_open_ids and opens the assistant reply."""
        return self._piece(self.user_tpl[1])

    def end_of_reply_ids(self) -> list[int]:
        return self._piece(self.reply_end)

    @property
    def end_of_turn_token_id(self) -> int:
        return self._piece(self.user_tpl[1])[0]

    @property
    def stop_ids(self) -> list[int]:
        ids = {self._piece(self.reply_end)[0]} if self.reply_end.strip() else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)
