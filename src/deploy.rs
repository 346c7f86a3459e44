//! Deploy targets: the embedded local platform, and a Kubernetes cluster.

pub mod kubernetes;
pub mod local;
