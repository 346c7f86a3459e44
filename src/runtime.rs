//! Where replicas come from, behind one seam (`pool::ReplicaPool`): `local` runs each
//! replica as a process on a loopback port (`replicas` supervises them); `kubernetes` scales
//! a function's Deployment and sends to its Service.

pub mod deps;
pub mod guard;
pub mod kubernetes;
pub mod local;
pub mod pool;
pub mod replicas;
pub mod sandbox;
pub mod secrets;
