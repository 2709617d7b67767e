//! pullcheck: can every image your workloads reference still be pulled?
//!
//! Data flow (DESIGN.md): sources → [`inventory`] → schedule → [`registry`] probe → telemetry.
//! [`check`] is one pass over that flow.

pub mod check;
pub mod config;
pub mod controller;
pub mod error;
pub mod image;
pub mod inventory;
pub mod registry;
pub mod schedule;
pub mod telemetry;

pub use error::{Error, Result};
