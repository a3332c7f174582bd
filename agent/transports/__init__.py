"""Transports beside Quickturn's own protocol, all served on one port (see router.py): OpenAI Realtime, Twilio
Media Streams, browser WebRTC; plus the shared hub (capacity, metrics, health)."""
