//! Triggers other than HTTP: schedules, async calls (their stores) and NATS JetStream
//! queue triggers.

pub mod calls;
pub mod jetstream_calls;
pub mod queue;
pub mod schedule;
pub mod store;
