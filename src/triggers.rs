//! Triggers other than HTTP. Only `schedule` runs locally so far; async calls and NATS
//! queue triggers are still open work.

pub mod calls;
pub mod queue;
pub mod schedule;
