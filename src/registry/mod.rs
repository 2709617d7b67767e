//! Asking a registry whether an image can be pulled, the way the container runtime would.
//!
//! A thin layer on reqwest rather than oci-client's `Client`: oci-client keeps the first
//! credentials per registry host for the client's lifetime (one namespace's pull secret would
//! serve another's), pings `/v2/` before authenticating, and hides the HTTP status, `Retry-After`
//! and per-request timings that the probe states and spans are made of. oci-client's media types
//! are used as they are. docs/architecture.md has the measured comparison.

mod auth;
mod client;
mod limits;
mod outcome;
mod platform;
mod probe;

pub use auth::{Challenge, Credential, TokenCache, parse_challenge, token_ttl};
pub use client::{ClientSettings, RegistryClient, RequestObserver};
pub use limits::parse_retry_after;
pub use outcome::{State, classify_status};
pub use platform::{Platform, missing as missing_platforms};
pub use probe::ProbeResult;
