"""How long the event streams keep their messages, and how long they deduplicate them."""

# Long enough for the nightly reconciliation's 48 h look-back, with room for a missed night.
STREAM_MAX_AGE_S = 7 * 24 * 3600
# Re-publishing an event (e.g. the outbox relay after a crash) within this window is dropped by
# its Nats-Msg-Id; the relay retries far sooner than this.
DUPLICATE_WINDOW_S = 120
