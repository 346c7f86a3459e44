//! cubeflash: Function-as-a-Service for Kubernetes that lives in a git repo.
//!
//! Data flows one way: `spec` (parse and validate the repo) -> `render` (manifests) ->
//! deploy; and `spec` -> gateway -> runtime.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod commands;
pub mod deploy;
pub mod gateway;
pub mod names;
pub mod render;
pub mod runtime;
pub mod scaffold;
pub mod spec;
pub mod triggers;
