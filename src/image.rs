//! Image references, parsed and canonicalised the way the container runtime does
//! (distribution/reference `ParseNormalizedNamed`): `nginx` is `docker.io/library/nginx:latest`.
//!
//! Anything that does not parse is `bad_image_format`: it is never sent to a registry.

use std::fmt;

/// The registry unqualified names resolve to, as in every CRI runtime's default.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API endpoint: `docker.io` is a name, not a host that serves `/v2/`.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
/// distribution/reference's `NameTotalLengthMax`.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed, canonical image reference. Held as its canonical text in one allocation, with
/// where its parts end: every image key holds one, and four strings each were a fifth of a
/// key's bytes (docs/architecture.md, "Footprint").
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `registry/repository[:tag][@digest]`.
    text: Box<str>,
    /// Ends of the registry, of the repository and of the `:tag` (the repository's end when
    /// there is none); the digest is what follows. Within `NAME_MAX + 1 + TAG_MAX` bytes.
    registry_end: u16,
    repository_end: u16,
    tag_end: u16,
}

impl Ord for ImageRef {
    /// By registry, repository, tag, then digest, each part as a whole (`x:1` before `x-y:1`).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn parts(r: &ImageRef) -> (&str, &str, Option<&str>, Option<&str>) {
            (r.registry(), r.repository(), r.tag(), r.digest())
        }
        parts(self).cmp(&parts(other))
    }
}

impl PartialOrd for ImageRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ImageRef").field(&&*self.text).finish()
    }
}

/// Why a reference is `bad_image_format`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference contains whitespace or control characters")]
    Whitespace,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    #[error("invalid repository path component {0:?}")]
    InvalidPathComponent(String),
    #[error("invalid tag {0:?}: a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    InvalidTag(String),
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("repository name longer than {NAME_MAX} characters")]
    NameTooLong,
    #[error("a 64-character hex string is an image ID, not a repository name")]
    ImageId,
}

impl ImageRef {
    /// Parses with Docker Hub as the registry of unqualified names.
    pub fn parse(input: &str) -> Result<Self, ImageRefError> {
        Self::parse_with_default(input, DOCKER_HUB)
    }

    /// Parses with `default_registry` for unqualified names (`library/` is added only on Docker Hub).
    pub fn parse_with_default(input: &str, default_registry: &str) -> Result<Self, ImageRefError> {
        if input.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageRefError::Whitespace);
        }
        if is_image_id(input) {
            return Err(ImageRefError::ImageId);
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (input, None),
        };
        let last_component_start = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_component_start..].find(':') {
            Some(i) => {
                let split = last_component_start + i;
                let tag = &name_and_tag[split + 1..];
                (&name_and_tag[..split], Some(parse_tag(tag)?))
            }
            None => (name_and_tag, None),
        };
        let (registry, path) = split_registry(name, default_registry);
        validate_registry(registry)?;
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageRefError::Uppercase);
        }
        for component in path.split('/') {
            if !is_path_component(component) {
                return Err(ImageRefError::InvalidPathComponent(component.to_string()));
            }
        }
        let registry = if registry == "index.docker.io" { DOCKER_HUB } else { registry };
        let repository =
            if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(ImageRefError::NameTooLong);
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG),
            (tag, _) => tag,
        };
        Self::from_parts(registry, &repository, tag, digest.as_deref())
    }

    /// The reference of checked parts (within `NAME_MAX` and `TAG_MAX`, so the ends fit).
    fn from_parts(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Self, ImageRefError> {
        let mut text = format!("{registry}/{repository}");
        let repository_end = text.len();
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        let tag_end = text.len();
        if let Some(digest) = digest {
            text.push('@');
            text.push_str(digest);
        }
        let end = |at: usize| u16::try_from(at).map_err(|_| ImageRefError::NameTooLong);
        Ok(Self {
            registry_end: end(registry.len())?,
            repository_end: end(repository_end)?,
            tag_end: end(tag_end)?,
            text: text.into_boxed_str(),
        })
    }

    /// The registry name as written in references (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        self.text.get(..usize::from(self.registry_end)).unwrap_or_default()
    }

    /// The host that serves the registry API for this name.
    pub fn api_host(&self) -> &str {
        api_host(self.registry())
    }

    pub fn repository(&self) -> &str {
        self.text.get(usize::from(self.registry_end) + 1..usize::from(self.repository_end)).unwrap_or_default()
    }

    pub fn tag(&self) -> Option<&str> {
        (self.tag_end > self.repository_end)
            .then(|| self.text.get(usize::from(self.repository_end) + 1..usize::from(self.tag_end)))
            .flatten()
    }

    pub fn digest(&self) -> Option<&str> {
        self.text.get(usize::from(self.tag_end) + 1..)
    }

    /// `registry/repository`: the image name without tag or digest (`container.image.name`).
    pub fn name(&self) -> String {
        self.text.get(..usize::from(self.repository_end)).unwrap_or_default().to_string()
    }

    /// What goes into `/v2/<name>/manifests/<reference>`: the digest pins the content when present,
    /// as it does for the runtime.
    pub fn manifest_reference(&self) -> &str {
        self.digest().or(self.tag()).unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The host serving the API of a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry }
}

/// A registry name's host and port, as the semantic conventions' `server.address` (the host
/// alone, IPv6 without brackets) and `server.port` want them.
pub fn host_and_port(registry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = registry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (registry, None),
        },
        None => (registry, None),
    }
}

/// distribution/reference's `splitDockerDomain`: the first component is a registry only when it
/// looks like a host (has `.` or `:`, is `localhost`, or has uppercase letters, which a path may not).
fn split_registry<'a>(name: &'a str, default_registry: &'a str) -> (&'a str, &'a str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (default_registry, name),
    }
}

fn validate_registry(registry: &str) -> Result<(), ImageRefError> {
    let invalid = || ImageRefError::InvalidRegistry(registry.to_string());
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(invalid)?;
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(invalid());
        }
        match after {
            "" => ("", None),
            p => ("", Some(p.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    if !registry.starts_with('[') && !host.split('.').all(is_host_label) {
        return Err(invalid());
    }
    Ok(())
}

fn is_host_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        let separator_len = match b {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&c| c == b'-').count(),
            _ => return false,
        };
        i += separator_len;
        expect_alnum = true;
    }
    !bytes.is_empty() && !expect_alnum
}

fn parse_tag(tag: &str) -> Result<&str, ImageRefError> {
    let valid = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if valid { Ok(tag) } else { Err(ImageRefError::InvalidTag(tag.to_string())) }
}

/// `algorithm:encoded`; sha256 and sha512 are checked for their exact hex length, as the runtime does.
fn parse_digest(digest: &str) -> Result<String, ImageRefError> {
    let invalid = || ImageRefError::InvalidDigest(digest.to_string());
    let (algorithm, encoded) = digest.split_once(':').ok_or_else(invalid)?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .split(['+', '.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let encoded_ok =
        encoded.len() >= 32 && encoded.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    let hex_len = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let known_ok = hex_len.is_none_or(|len| {
        encoded.len() == len && encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if algorithm_ok && encoded_ok && known_ok { Ok(digest.to_string()) } else { Err(invalid()) }
}

fn is_image_id(input: &str) -> bool {
    input.len() == 64 && input.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        match ImageRef::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn host_and_port_split_as_semconv_wants() {
        assert_eq!(host_and_port("127.0.0.1:5443"), ("127.0.0.1", Some(5443)));
        assert_eq!(host_and_port("[::1]:5000"), ("::1", Some(5000)));
        assert_eq!(host_and_port("[::1]"), ("::1", None));
        assert_eq!(host_and_port("docker.io"), ("docker.io", None));
        assert_eq!(host_and_port("localhost"), ("localhost", None));
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(canonical("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(canonical("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(canonical("bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(canonical("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(canonical("index.docker.io/library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(ImageRef::parse("nginx").map(|r| r.api_host().to_string()), Ok(DOCKER_HUB_API.into()));
    }

    #[test]
    fn registries_ports_localhost_and_ipv6() {
        assert_eq!(canonical("localhost/app"), "localhost/app:latest");
        assert_eq!(canonical("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(canonical("registry.k8s.io/pause:3.9"), "registry.k8s.io/pause:3.9");
        assert_eq!(canonical("[::1]:5000/team/app:v2"), "[::1]:5000/team/app:v2");
        assert_eq!(canonical("[fe80::1]/app"), "[fe80::1]/app:latest");
        // Without a slash, `localhost:5000` is Docker Hub's `localhost` at tag 5000, as for docker.
        assert_eq!(canonical("localhost:5000"), "docker.io/library/localhost:5000");
        // An uppercase first component can only be a host.
        assert_eq!(canonical("Registry.Example/app"), "Registry.Example/app:latest");
    }

    #[test]
    fn tags_and_digests() {
        assert_eq!(canonical(&format!("nginx@{SHA}")), format!("docker.io/library/nginx@{SHA}"));
        let both = ImageRef::parse(&format!("nginx:1.27@{SHA}")).expect("valid");
        assert_eq!(both.to_string(), format!("docker.io/library/nginx:1.27@{SHA}"));
        assert_eq!(both.manifest_reference(), SHA);
        assert_eq!(ImageRef::parse("nginx").expect("valid").manifest_reference(), "latest");
    }

    #[test]
    fn parts_read_back_from_the_one_text_and_order_as_parts() {
        let both = ImageRef::parse(&format!("localhost:5000/team/app:v1@{SHA}")).expect("valid");
        assert_eq!(
            (both.registry(), both.repository(), both.tag(), both.digest(), both.name().as_str()),
            ("localhost:5000", "team/app", Some("v1"), Some(SHA), "localhost:5000/team/app")
        );
        let pinned = ImageRef::parse(&format!("app@{SHA}")).expect("valid");
        assert_eq!((pinned.repository(), pinned.tag(), pinned.digest()), ("library/app", None, Some(SHA)));
        let tagged = ImageRef::parse("app:1").expect("valid");
        assert_eq!((tagged.tag(), tagged.digest()), (Some("1"), None));
        let parse = |s: &str| ImageRef::parse(s).expect("valid");
        // As text, `:` sorts after `-`; as parts, the shorter repository comes first.
        assert!(parse("x:1") < parse("x-y:1"));
        assert!(tagged < parse(&format!("app:1@{SHA}")), "no digest before a digest");
        // Every image key holds one: a pointer, a length and the ends, not four strings.
        assert!(std::mem::size_of::<ImageRef>() <= 3 * std::mem::size_of::<usize>());
    }

    #[test]
    fn bad_formats_name_the_problem() {
        use ImageRefError::*;
        let err = |s: &str| ImageRef::parse(s).expect_err(s);
        assert_eq!(err(""), Empty);
        assert_eq!(err("Nginx"), Uppercase);
        assert_eq!(err("nginx:"), InvalidTag(String::new()));
        assert_eq!(err("nginx:-x"), InvalidTag("-x".into()));
        assert_eq!(err("nginx@sha256:abc"), InvalidDigest("sha256:abc".into()));
        assert_eq!(err("ex ample/app"), Whitespace);
        assert_eq!(err("example.com:port/app"), InvalidRegistry("example.com:port".into()));
        assert_eq!(err("[::1/app"), InvalidRegistry("[::1".into()));
        assert_eq!(err("a//b"), InvalidPathComponent(String::new()));
        assert_eq!(err("app-/x"), InvalidPathComponent("app-".into()));
        assert_eq!(err("-bad.example/app"), InvalidRegistry("-bad.example".into()));
        assert_eq!(err(&"a".repeat(300)), NameTooLong);
        assert_eq!(err(&SHA[7..]), ImageId);
    }

    #[test]
    fn path_components() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "_a", "a_", "a___b", "a..b", "a.", "A"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn default_registry_for_unqualified_names() {
        let r = ImageRef::parse_with_default("team/app", "mirror.example:5000").expect("valid");
        assert_eq!(r.to_string(), "mirror.example:5000/team/app:latest");
        let r = ImageRef::parse_with_default("app", "mirror.example").expect("valid");
        assert_eq!(r.to_string(), "mirror.example/app:latest");
    }
}
