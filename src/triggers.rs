//! Triggers other than HTTP: schedules, async calls (their stores) and NATS JetStream
//! queue triggers.

pub mod calls;
pub mod jetstream_calls;
pub mod queue;
pub mod schedule;
pub mod store;

use std::sync::Arc;

use crate::gateway::async_calls::AsyncCalls;
use crate::gateway::Gateway;

/// The trigger loops a backend runs whatever it is: async delivery (when it has a store)
/// and the queue triggers' consumers (when it has a NATS server).
pub fn start(
    gateway: &Arc<Gateway>,
    calls: Option<&Arc<AsyncCalls>>,
    nats_url: Option<&str>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut loops = Vec::new();
    if let Some(calls) = calls {
        loops.push(tokio::spawn(crate::gateway::async_calls::deliver_loop(
            gateway.clone(),
            calls.clone(),
        )));
    }
    if let Some(url) = nats_url {
        loops.push(tokio::spawn(queue::run(gateway.clone(), url.to_string())));
    }
    loops
}
