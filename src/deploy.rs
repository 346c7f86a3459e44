//! Sending the repo to a target. Only the local target exists so far: it starts the local
//! platform in the background, or makes the running one reload.

pub mod local;
