//! The async call store a backend uses: redb on the local platform (`calls.rs`), NATS
//! JetStream in a cluster or where cubeflash.yaml asks for it (`jetstream_calls.rs`). Both
//! apply the same state changes; this is the one interface the delivery loop, the accept
//! path and the admin API use.

use std::sync::Arc;
use std::time::Duration;

use super::calls::{Backlog, CallStore, NewCall, Outcome, StoreError};
use super::jetstream_calls::JetCalls;
use crate::gateway::api::{Attempt, Call, CallState};

#[derive(Clone)]
pub enum Store {
    Redb(Arc<CallStore>),
    JetStream(Arc<JetCalls>),
}

/// Runs a blocking redb operation off the async workers.
async fn blocking<T: Send + 'static>(
    store: &Arc<CallStore>,
    op: impl FnOnce(&CallStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || op(&store)).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Commit(format!("the store's task failed: {e}"))),
    }
}

impl Store {
    /// What the store is, as `/system/functions` and the docs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redb(_) => "redb",
            Self::JetStream(_) => "jetstream",
        }
    }

    /// How long a delivery holds a call before it must extend its lease.
    pub fn lease(&self) -> Duration {
        match self {
            Self::Redb(_) => Duration::from_secs(30),
            Self::JetStream(s) => s.lease,
        }
    }

    pub async fn accept(&self, new: NewCall, id: String) -> Result<(String, bool), StoreError> {
        match self {
            Self::Redb(s) => blocking(s, move |s| s.accept(new, id)).await,
            Self::JetStream(s) => s.accept(new, id).await,
        }
    }

    pub async fn lease_due(
        &self,
        function: &str,
        n: usize,
        lease_until: u64,
    ) -> Result<Vec<(Call, Vec<u8>)>, StoreError> {
        match self {
            Self::Redb(s) => {
                let f = function.to_string();
                blocking(s, move |s| s.lease_due(&f, n, lease_until)).await
            }
            Self::JetStream(s) => s.lease_due(function, n, lease_until).await,
        }
    }

    pub async fn pending(&self, function: &str, cap: usize) -> Result<Backlog, StoreError> {
        match self {
            Self::Redb(s) => {
                let f = function.to_string();
                blocking(s, move |s| s.pending(&f, cap)).await
            }
            Self::JetStream(s) => s.pending(function, cap).await,
        }
    }

    pub async fn extend(&self, id: &str, lease_until: u64) -> Result<(), StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.extend(&id, lease_until)).await
            }
            Self::JetStream(s) => s.extend(id).await,
        }
    }

    pub async fn finish(
        &self,
        id: &str,
        attempt: Attempt,
        outcome: Outcome,
    ) -> Result<Call, StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.finish(&id, attempt, outcome)).await
            }
            Self::JetStream(s) => s.finish(id, attempt, outcome).await,
        }
    }

    /// Calls a stopped gateway left running go back in their queues (JetStream does this
    /// itself once their lease runs out). Returns how many.
    pub async fn requeue_running(&self) -> Result<usize, StoreError> {
        match self {
            Self::Redb(s) => blocking(s, |s| s.requeue_running()).await,
            Self::JetStream(_) => Ok(0),
        }
    }

    pub async fn callback_tried(
        &self,
        id: &str,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<Call, StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.callback_tried(&id, status, error)).await
            }
            Self::JetStream(s) => s.callback_tried(id, status, error).await,
        }
    }

    pub async fn pending_callbacks(&self) -> Result<Vec<Call>, StoreError> {
        match self {
            Self::Redb(s) => blocking(s, |s| s.pending_callbacks()).await,
            Self::JetStream(s) => s.pending_callbacks().await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Call, StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.get(&id)).await
            }
            Self::JetStream(s) => s.get(id).await,
        }
    }

    pub async fn list(
        &self,
        function: Option<String>,
        state: Option<CallState>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        match self {
            Self::Redb(s) => blocking(s, move |s| s.list(function.as_deref(), state, limit)).await,
            Self::JetStream(s) => s.list(function.as_deref(), state, limit).await,
        }
    }

    pub async fn redrive(&self, id: &str) -> Result<Call, StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.redrive(&id)).await
            }
            Self::JetStream(s) => s.redrive(id).await,
        }
    }

    pub async fn purge(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Redb(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.purge(&id)).await
            }
            Self::JetStream(s) => s.purge(id).await,
        }
    }

    pub async fn prune(&self, before: u64) -> Result<usize, StoreError> {
        match self {
            Self::Redb(s) => blocking(s, move |s| s.prune(before)).await,
            Self::JetStream(s) => s.prune(before).await,
        }
    }
}
