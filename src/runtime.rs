//! Where replicas come from. `local` runs each replica as a process on a loopback port;
//! the Kubernetes scaler is future work (see README, Status).

pub mod local;
pub mod replicas;
