//! rabbitry-postgres: the outbox store and resend loop.
