//! The fault suite (docs/reliability.md): every fault a registry, a token service, the API
//! server, a collector or an input can throw, each against real parts, each recording one row
//! of the table in docs/reliability.md — what was expected, what pullcheck gave, its peak
//! resident memory and the time it took. `scripts/faults` runs the suite and writes the table.

#[path = "../support/mod.rs"]
mod support;

mod apiserver;
mod collector;
mod credentials;
mod figures;
mod inputs;
mod registry;
mod transport;
