//! Asking a registry whether an image can be pulled, the way the container runtime would.
//!
//! A thin layer on reqwest rather than oci-client's `Client`: oci-client keeps the first
//! credentials per registry host for the client's lifetime (one namespace's pull secret would
//! serve another's), pings `/v2/` before authenticating, and hides the HTTP status, `Retry-After`
//! and per-request timings that the probe states and spans are made of. oci-client's media types
//! are used as they are. docs/architecture.md has the measured comparison.
//!
//! A probe, top down: [`probe`] tries the endpoints [`routes`] lists (mirrors, then the
//! registry), [`credentials`] each
//! credential in kubelet's order, [`retry`] retries one host,
//! [`resolve`] runs HEAD/GET with the authentication flow, [`token`] fetches bearer tokens,
//! [`http`] sends each request in its span with a bounded body, and [`manifest`] reads the answer.

mod auth;
mod client;
mod credentials;
mod destination;
mod http;
mod limits;
mod manifest;
mod outcome;
mod phases;
mod probe;
mod rate_limit;
mod resolve;
mod retry;
mod routes;
mod tls;
mod token;

pub use auth::{Challenge, TokenCache, parse_challenge, token_ttl};
pub use client::{ClientSettings, RegistryClient, RequestObserver, RequestRecord};
pub use destination::NameResolver;
pub use limits::parse_retry_after;
pub use outcome::{State, classify_status};
pub use probe::{ProbeResult, Trigger};
pub use rate_limit::RateLimit;
