//! Where a registry's manifests are asked for, in containerd's order: the registry's hosts
//! directory (`--hosts-dir`, containerd's `config_path`) when it has one, else the registry
//! config's mirrors and then the registry itself (docs/registry-config.md has the precedence);
//! or, with `--registries-conf`, CRI-O's pull sources, each asked for its rewritten reference.

use std::sync::Arc;

use super::client::{Host, HostSpec, RegistryClient};
use crate::config::Transport;
use crate::config::hosts::Endpoint;
use crate::config::registries_conf::Sources;
use crate::credentials::Credential;
use crate::error::{Error, Result};
use crate::image::{ImageRef, api_host};

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
    /// The reference asked for here when it is not the probed one: a registries.conf prefix
    /// rewritten to this endpoint's location (`quay.io/foo/bar` at `mirror.example/quay-foo/bar`).
    pub image: Option<ImageRef>,
}

impl Route {
    /// What to ask this endpoint for: the rewritten reference, else the probed image.
    pub fn asked<'a>(&'a self, probed: &'a ImageRef) -> &'a ImageRef {
        self.image.as_ref().unwrap_or(probed)
    }

    /// Whether this endpoint may answer for a reference (a tag or a digest).
    pub fn serves(&self, by_digest: bool) -> bool {
        if by_digest { self.pulls_digests } else { self.resolves_tags }
    }
}

impl RegistryClient {
    /// The endpoints of `image`'s registry, in the order they are tried.
    pub(crate) fn routes(&self, image: &ImageRef) -> Result<Vec<Route>> {
        let registry = image.registry();
        let config = self.config();
        if let Some(sources) = config.registries_conf().and_then(|conf| conf.sources(image)) {
            let sources = sources.map_err(|problem| Error::Endpoint { name: registry.to_string(), problem })?;
            let sources = match sources {
                Sources::Blocked { prefix } => return Err(Error::Blocked { prefix }),
                Sources::Pull(sources) => sources,
            };
            return sources.iter().map(|s| self.pull_source_route(&s.endpoint, &s.image)).collect();
        }
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
        Ok(Route {
            host,
            mirror: false,
            resolves_tags: true,
            pulls_digests: true,
            ns: None,
            credential: None,
            image: None,
        })
    }

    /// A registries.conf pull source: no `?ns=` (CRI-O sends none), the reference rewritten to
    /// the source's location; a mirror gets only the node's credential for the rewritten
    /// reference, never the workload's (docs/registry-config.md, "CRI-O: registries.conf").
    fn pull_source_route(&self, endpoint: &Endpoint, asked: &ImageRef) -> Result<Route> {
        let host = self.endpoint_host(endpoint)?;
        let credential = endpoint.is_mirror.then(|| self.config().credential_for(asked)).flatten();
        Ok(Route {
            host,
            mirror: endpoint.is_mirror,
            resolves_tags: true,
            pulls_digests: true,
            ns: None,
            credential,
            image: Some(asked.clone()),
        })
    }

    /// A hosts.toml endpoint: its URL, TLS material, headers and capabilities.
    fn endpoint_route(&self, registry: &str, endpoint: &Endpoint) -> Result<Route> {
        let host = self.endpoint_host(endpoint)?;
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
            image: None,
        })
    }

    /// The client of an endpoint: its URL, transport, TLS material and headers.
    fn endpoint_host(&self, endpoint: &Endpoint) -> Result<Arc<Host>> {
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
        self.host(HostSpec {
            name: endpoint.host.clone(),
            base: endpoint.url.clone(),
            transport,
            ca_pems: endpoint.ca_pems.clone(),
            skip_verify: endpoint.skip_verify.unwrap_or(false),
            identity,
            headers: endpoint.headers.clone(),
            connect_timeout: endpoint.dial_timeout,
        })
    }
}
