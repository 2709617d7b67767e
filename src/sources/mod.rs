//! Where workloads and what they pull with come from: manifests on disk, the cluster's
//! objects (paged lists for `check`, watchers for `run`), pull secrets, the nodes' platforms,
//! and the pull failures kubelet reports. Each source reduces what it reads to the inventory's slim records.

pub mod cluster;
pub mod coalesce;
pub mod events;
pub mod manifests;
pub mod nodes;
pub mod secrets;
