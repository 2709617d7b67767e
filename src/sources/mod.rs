//! Where workloads and what they pull with come from: manifests on disk, the cluster's
//! objects (paged lists for `check`, watchers for `run`), pull secrets, and the nodes'
//! platforms. Each source reduces what it reads to the inventory's slim records.

pub mod cluster;
pub mod manifests;
pub mod nodes;
pub mod secrets;
