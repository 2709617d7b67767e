//! Where a request may go. Image references come from whoever may create a workload, token realms
//! and redirects from whatever registry answers: none of them may point pullcheck at a link-local
//! address — where cloud metadata services hand out the node's credentials — unless the operator
//! named that host in the registry config or the hosts directory (docs/registry-config.md, "Where
//! credentials go"). The check runs before any connection: on the URL's literal address, on every
//! redirect hop, and on every address a name resolves to.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// AWS's instance metadata service over IPv6 (the IPv4 one is 169.254.169.254, link-local).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Link-local (169.254.0.0/16, fe80::/10, the same behind an IPv4-mapped IPv6 address) or a
/// cloud metadata address outside those (fd00:ec2::254).
pub(crate) fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6,
        },
    }
}

/// A host as the allow-list compares it: lowercase, without brackets or port.
fn normalise_host(host: &str) -> String {
    // A bare IPv6 address has colons but no port.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.to_string();
    }
    let host = crate::image::host_and_port(host).0.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().map_or_else(|_| host.to_ascii_lowercase(), |ip| ip.to_string())
}

/// A destination refused before connecting.
#[derive(Debug)]
pub(crate) struct Refused {
    pub host: String,
    pub address: IpAddr,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to connect to {} ({}): a link-local or cloud metadata address; name the host in the registry \
             config to reach it",
            self.host, self.address
        )
    }
}

impl std::error::Error for Refused {}

/// The hosts the operator configured: the only ones allowed to be link-local.
#[derive(Debug, Default)]
pub(crate) struct Destinations {
    configured: HashSet<String>,
}

impl Destinations {
    pub fn new<'a>(configured: impl IntoIterator<Item = &'a str>) -> Self {
        Self { configured: configured.into_iter().map(normalise_host).collect() }
    }

    fn is_configured(&self, host: &str) -> bool {
        self.configured.contains(&normalise_host(host))
    }

    /// Whether `host` (as named: a name or an address) may be reached at `address`.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        if is_link_local_or_metadata(address) && !self.is_configured(host) {
            return Err(Refused { host: host.to_string(), address });
        }
        Ok(())
    }

    /// The URL's host when it is a literal address (names are checked once resolved: see
    /// [`GuardedResolver`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        // The URL parser has already normalised every IPv4 spelling (`2852039166`, `0xa9.254.169.254`).
        let host = url.host_str().unwrap_or_default();
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(address) => self.check(host, address),
            Err(_) => Ok(()),
        }
    }

    /// The addresses a name resolved to that may be reached; none left: refused.
    pub fn filter(&self, name: &str, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|a| match self.check(name, a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some(refused)) => Err(refused),
            _ => Ok(allowed),
        }
    }
}

/// A resolver in place of the system's (reqwest's [`Resolve`]): for a library user with its own
/// name service, and for tests that need a lookup to take a known time. Its answers pass the
/// same destination check and are timed the same way.
#[derive(Clone)]
pub struct NameResolver(pub Arc<dyn Resolve>);

impl fmt::Debug for NameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameResolver(..)")
    }
}

/// The system resolver (getaddrinfo, as reqwest's default) or the one given, with the addresses a
/// name may not reach taken out before reqwest connects.
pub(crate) struct GuardedResolver {
    pub destinations: Arc<Destinations>,
    pub resolver: Option<NameResolver>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = self.destinations.clone();
        let host = name.as_str().to_string();
        let given = self.resolver.as_ref().map(|r| r.0.resolve(name));
        Box::pin(async move {
            let started = std::time::Instant::now();
            let resolved: Vec<SocketAddr> = match given {
                Some(resolving) => resolving.await?.collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            super::phases::record_lookup(started.elapsed(), &resolved);
            let allowed = destinations.filter(&host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Redirects as containerd follows them (Go's limit of 10), each hop's literal address checked
/// before it is followed. reqwest drops `Authorization` itself on a hop to another scheme, host
/// or port.
pub(crate) fn redirect_policy(destinations: Arc<Destinations>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(TooManyRedirects);
        }
        match destinations.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// containerd's (Go's `http.Client`'s) limit.
pub(crate) const MAX_REDIRECTS: usize = 10;

#[derive(Debug)]
struct TooManyRedirects;

impl fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "too many redirects (more than {MAX_REDIRECTS})")
    }
}

impl std::error::Error for TooManyRedirects {}

/// The [`Refused`] in an error's cause chain, if that is why it failed.
pub(crate) fn refused_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        // An io::Error's `source()` skips the error it wraps: step into it instead.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(wrapped) => Some(wrapped as &dyn std::error::Error),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn link_local_and_metadata_addresses() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "169.254.255.255",
            "fe80::1",
            "febf:ffff::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_link_local_or_metadata(ip(refused)), "{refused}");
        }
        for allowed in
            ["127.0.0.1", "10.0.0.1", "169.253.255.255", "169.255.0.1", "::1", "fec0::1", "fd00:ec2::253", "8.8.8.8"]
        {
            assert!(!is_link_local_or_metadata(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn configured_hosts_may_be_link_local() {
        let destinations = Destinations::new(["169.254.10.5:5000", "metadata.internal", "[FE80::1]:443"]);
        assert!(destinations.check("169.254.10.5", ip("169.254.10.5")).is_ok(), "configured, any port");
        assert!(destinations.check("METADATA.internal", ip("169.254.169.254")).is_ok());
        assert!(destinations.check("fe80::1", ip("fe80::1")).is_ok(), "a bare address, spelt otherwise");
        assert!(destinations.check("[fe80::1]", ip("fe80::1")).is_ok(), "as a URL has it");
        let refused = destinations.check("169.254.169.254", ip("169.254.169.254"));
        assert!(refused.is_err_and(|e| e.to_string().contains("refused to connect to 169.254.169.254")));
        assert!(destinations.check("registry.example", ip("10.1.2.3")).is_ok(), "not link-local");
    }

    #[test]
    fn urls_with_literal_addresses() {
        let destinations = Destinations::default();
        let url = |s: &str| Url::parse(s).expect("test URL");
        assert!(destinations.check_url(&url("http://169.254.169.254/token")).is_err());
        assert!(destinations.check_url(&url("https://[fd00:ec2::254]/latest")).is_err());
        assert!(destinations.check_url(&url("https://[fe80::1]:5000/v2/")).is_err());
        assert!(destinations.check_url(&url("https://127.0.0.1:5000/v2/")).is_ok());
        assert!(destinations.check_url(&url("https://metadata.google.internal/")).is_ok(), "names: once resolved");
        assert!(destinations.check_url(&url("http://2852039166/")).is_err(), "169.254.169.254 as one number");
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let destinations = Destinations::default();
        let at = |s: &str| SocketAddr::new(ip(s), 0);
        let mixed = destinations.filter("both.example", vec![at("169.254.169.254"), at("10.0.0.7")]);
        assert_eq!(mixed.ok(), Some(vec![at("10.0.0.7")]), "the link-local one is dropped");
        let only = destinations.filter("metadata.google.internal", vec![at("169.254.169.254")]);
        assert!(only.is_err_and(|e| e.host == "metadata.google.internal"));
        assert_eq!(destinations.filter("none.example", vec![]).ok(), Some(vec![]), "resolution's own error");
    }

    #[test]
    fn refusals_are_found_in_cause_chains() {
        let refused = Refused { host: "h".into(), address: ip("169.254.1.1") };
        let wrapped = std::io::Error::other(refused);
        assert!(refused_in(&wrapped).is_some_and(|r| r.host == "h"), "inside an io::Error too");
        assert!(refused_in(&std::io::Error::other("other")).is_none());
    }
}
