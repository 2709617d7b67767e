//! Where a registry's manifests are asked for, in containerd's order: the registry's hosts
//! directory (`--hosts-dir`, containerd's `config_path`) when it has one, else the registry
//! config's mirrors and then the registry itself (docs/registry-config.md has the precedence).

use std::sync::Arc;

use super::client::{Host, HostSpec, RegistryClient};
use crate::config::Transport;
use crate::config::hosts::Endpoint;
use crate::credentials::Credential;
use crate::error::{Error, Result};
use crate::image::api_host;

/// One endpoint of a registry, ready to be asked.
pub(crate) struct Route {
    pub host: Arc<Host>,
    /// A mirror: it must serve the image to count; the registry's own answer comes last.
    pub mirror: bool,
    /// Tags are resolved only where `pull` and `resolve` are allowed, digests where `pull` is.
    pub resolves_tags: bool,
    pub pulls_digests: bool,
    /// `?ns=<registry>` on its requests: it serves another registry's content.
    pub ns: Option<String>,
    /// A mirror's own credential from the registry config; the registry gets the workload's.
    pub credential: Option<Credential>,
}

impl Route {
    /// Whether this endpoint may answer for a reference (a tag or a digest).
    pub fn serves(&self, by_digest: bool) -> bool {
        if by_digest { self.pulls_digests } else { self.resolves_tags }
    }
}

impl RegistryClient {
    /// The endpoints of `registry`, in the order they are tried.
    pub(crate) fn routes(&self, registry: &str) -> Result<Vec<Route>> {
        let config = self.config();
        if let Some(endpoints) = config.hosts_dir().and_then(|dir| dir.endpoints(registry)) {
            return endpoints.iter().map(|e| self.endpoint_route(registry, e)).collect();
        }
        let mut routes = Vec::new();
        for mirror in config.host(registry).mirrors {
            let mut route = self.configured_route(&mirror)?;
            route.mirror = true;
            route.ns = Some(registry.to_string());
            route.credential = config.host(&mirror).credential;
            routes.push(route);
        }
        routes.push(self.configured_route(registry)?);
        Ok(routes)
    }

    /// A registry reached as the registry config says (`plainHttp`, `caFile`, `skipTlsVerify`).
    fn configured_route(&self, registry: &str) -> Result<Route> {
        let host_config = self.config().host(registry);
        let name = api_host(registry);
        let transport = host_config.transport(registry);
        let scheme = if transport == Transport::Http { "http" } else { "https" };
        let base = reqwest::Url::parse(&format!("{scheme}://{name}/v2"))
            .map_err(|e| Error::Endpoint { name: name.to_string(), problem: e.to_string() })?;
        // containerd 2.x skips verification for an unconfigured loopback host it reaches over
        // HTTPS first (a local registry with a self-signed certificate pulls).
        let skip_verify = host_config.skip_tls_verify || transport == Transport::HttpsThenHttp;
        let host = self.host(HostSpec {
            name: name.to_string(),
            base,
            transport,
            ca_pems: host_config.ca_pem.into_iter().collect(),
            skip_verify,
            identity: None,
            headers: Vec::new(),
            connect_timeout: None,
        })?;
        Ok(Route { host, mirror: false, resolves_tags: true, pulls_digests: true, ns: None, credential: None })
    }

    /// A hosts.toml endpoint: its URL, TLS material, headers and capabilities.
    fn endpoint_route(&self, registry: &str, endpoint: &Endpoint) -> Result<Route> {
        let transport = match (endpoint.http_fallback, endpoint.url.scheme()) {
            (true, _) => Transport::HttpsThenHttp,
            (false, "http") => Transport::Http,
            (false, _) => Transport::Https,
        };
        let identity = endpoint.client_identities.first().map(|(cert, key)| {
            let mut pem = cert.clone();
            if key != cert {
                pem.push(b'\n');
                pem.extend_from_slice(key);
            }
            pem
        });
        let host = self.host(HostSpec {
            name: endpoint.host.clone(),
            base: endpoint.url.clone(),
            transport,
            ca_pems: endpoint.ca_pems.clone(),
            skip_verify: endpoint.skip_verify.unwrap_or(false),
            identity,
            headers: endpoint.headers.clone(),
            connect_timeout: endpoint.dial_timeout,
        })?;
        // A `[host]` entry at the registry's own host and port (containerd's documented examples
        // put the server's CA there) is the registry reached with that table's settings: the
        // workload's credentials go to it, as containerd's authorizer keys them by host, and its
        // answer is the registry's. Only an endpoint elsewhere is a mirror.
        let mirror = endpoint.is_mirror && endpoint.is_proxy_for(registry);
        let credential = mirror.then(|| self.config().host(&endpoint.host).credential).flatten();
        Ok(Route {
            host,
            mirror,
            resolves_tags: endpoint.resolves_tags(),
            pulls_digests: endpoint.pulls_digests(),
            ns: endpoint.is_proxy_for(registry).then(|| registry.to_string()),
            credential,
        })
    }
}
