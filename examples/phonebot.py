"""A phone bot for a pizzeria, as a service would embed Quickturn (docs/embedding.md).

Callers reach it through Twilio (TwiML <Connect><Stream url="wss://<host>/twilio"/>, docs/transports.md); the same
process also answers the browser page (/webrtc), OpenAI Realtime clients (/v1/realtime) and Prometheus (/metrics).

What it shows:
  - instructions per call, from the TwiML's <Parameter> values (Twilio's customParameters)
  - a tool hook: opening hours and the order status come from "our systems" (a dict here), not from the LLM
  - DTMF: pressing 0 asks for a human; the bot ends the stream after saying so (the TwiML after <Connect> can
    <Dial> the front desk)

    python examples/phonebot.py --port 8765 [--config cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import re

from agent.embed import Agent, Conversation, TurnResult

HOURS = "We are open from eleven in the morning to ten at night, every day except Monday."
ORDERS = {"1234": "in the oven, ready in ten minutes", "5678": "out for delivery"}
NUMBER_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9"}


def instructions(info: dict) -> str:
    """The system prompt for one call. Twilio's customParameters can carry, e.g., the caller's name."""
    name = (info.get("custom") or {}).get("caller_name")
    greet = f" The caller's name is {name}." if name else ""
    return ("You answer the phone for Luigi's pizzeria. Reply in one short, friendly spoken sentence. "
            "Never invent opening hours or order details: use only the facts you are given." + greet)


def order_number(text: str) -> str | None:
    words = re.findall(r"[a-z]+|\d", text.lower())
    digits = "".join(NUMBER_WORDS.get(w, w if w.isdigit() else "") for w in words)
    m = re.search(r"\d{4}", digits)
    return m.group(0) if m else None


async def on_turn(conv: Conversation, text: str) -> TurnResult | str | None:
    """Our 'tools': run before the LLM answers each caller turn."""
    t = text.lower()
    if any(w in t for w in ("open", "hours", "close", "closing")):
        return HOURS  # the LLM phrases it; the fact comes from here
    if "order" in t:
        num = order_number(t)
        if num is None:
            return "Ask the caller for their four-digit order number."
        status = ORDERS.get(num)
        return f"Order {num} is {status}." if status else f"There is no order {num}; ask them to check the number."
    if any(w in t for w in ("goodbye", "bye", "that's all")):
        return TurnResult(context="Say goodbye to the caller.", end=True)
    return None  # small talk: the LLM answers on its own


async def on_dtmf(conv: Conversation, digit: str) -> None:
    if digit == "0":
        conv.end_requested = True
        await conv.add_user_text("I pressed zero: please put me through to a person.", respond=False)
        r = await conv.respond()
        conv.end_turn = r.turn  # the stream ends once the caller has heard this reply


def make_agent(config: str = "cpu", overrides: dict | None = None) -> Agent:
    return Agent.load(config, overrides, instructions=instructions, on_turn=on_turn, on_dtmf=on_dtmf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    agent = make_agent(args.config)
    try:
        asyncio.run(agent.serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()


if __name__ == "__main__":
    main()
