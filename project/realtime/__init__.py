"""Real-time plumbing: the event hub (wake-ups over Redis pub/sub or local datagrams), the
shared Redis connection pool, and Server-Sent Events framing and stream-view plumbing."""
