"""How long the event streams keep their messages, how long they deduplicate them, and from how
many events on a relay publishes them as one atomic batch (paysaga.runtime.messaging.batches)."""

# Long enough for the nightly reconciliation's 48 h look-back, with room for a missed night.
STREAM_MAX_AGE_S = 7 * 24 * 3600
# Re-publishing an event (e.g. the outbox relay after a crash) within this window is dropped by
# its Nats-Msg-Id; the relay retries far sooner than this.
DUPLICATE_WINDOW_S = 120
# Events published together from which an atomic batch pays (measured: see
# paysaga.runtime.messaging.batches), and JetStream's limit on the messages of one.
ATOMIC_BATCH_MIN = 64
ATOMIC_BATCH_MAX = 1000
