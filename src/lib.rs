//! pullcheck: can every image your workloads reference still be pulled?
//!
//! Data flow (docs/architecture.md): [`sources`] → [`inventory`] → [`schedule`] → [`registry`]
//! probe → [`telemetry`]. [`check`] is one pass over that flow, [`controller`] the loop of `run`.
//! Under them, the vocabulary every layer shares: [`image`] references, [`platform`]s,
//! [`credentials`], the registry [`config`], and shared [`name`]s.

#![forbid(unsafe_code)]
// Nothing from outside may panic the process: errors are values. Tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod check;
pub mod config;
pub mod controller;
pub mod credentials;
pub mod error;
pub mod health;
pub mod image;
pub mod inventory;
pub mod name;
pub mod platform;
pub mod registry;
pub mod report;
pub mod schedule;
pub mod sources;
pub mod telemetry;
pub mod yaml;

pub use error::{Error, Result, Warning, WarningKind};
