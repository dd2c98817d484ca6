"""What every API request goes through: the ASGI handler, middleware, authentication, body
parsing and storable-input checks, throttling, idempotency, rendering, and the one error
renderer."""
