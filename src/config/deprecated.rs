//! Registries (and repositories) that stopped receiving images and where their images went:
//! `k8s.gcr.io` was frozen in 2023 and serves nothing new. A built-in table, extended and
//! overridden by the registry config's `deprecatedRegistries`. An image under a deprecated prefix
//! is flagged, and the same repository path, tag and digest under the replacement is what
//! `check` probes to say whether switching works today (docs/check.md, docs/states.md).
//!
//! The second kind, moved repositories (`BUILT_IN_MOVED`, overridden by `movedRepositories`):
//! repositories whose versioned tags went elsewhere while the original still serves some
//! (`docker.io/bitnami` keeps `latest`). Their images are neither flagged nor their replacement
//! probed while they can be pulled; only an image that came back `absent` gets its replacement
//! probed and reported (`Condition::WhenAbsent`).

use std::collections::BTreeMap;
use std::fmt;

use crate::image::ImageRef;

/// The built-in moves: (deprecated prefix, replacement prefix). docs/check.md gives the source
/// of each; only moves whose images kept their paths, tags and digests, or whose new place is
/// the project's own statement, are here.
pub const BUILT_IN: &[(&str, &str)] = &[
    // Frozen on 2023-04-03 by the Kubernetes project; registry.k8s.io serves its images under
    // the same paths and digests (the same promoter copied them).
    ("k8s.gcr.io", "registry.k8s.io"),
    // The GCR project k8s.gcr.io fronted until 2020: no Kubernetes image is pushed there.
    ("gcr.io/google-containers", "registry.k8s.io"),
    // ingress-nginx left quay.io with v0.34.0 (2020); the repository is read-only since.
    ("quay.io/kubernetes-ingress-controller/nginx-ingress-controller", "registry.k8s.io/ingress-nginx/controller"),
];

/// The built-in moves that apply only to images gone from the original: (original prefix,
/// replacement prefix). docs/check.md gives the source of each.
pub const BUILT_IN_MOVED: &[(&str, &str)] = &[
    // Bitnami moved its versioned tags to bitnamilegacy on 2025-08-28 and deleted them from
    // the original repositories, which keep serving a few (`latest`).
    ("docker.io/bitnami", "docker.io/bitnamilegacy"),
];

/// When an image's replacement stands in for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// A deprecated registry: always (the image is flagged, its replacement always probed).
    Always,
    /// A moved repository: only while the image itself is `absent`.
    WhenAbsent,
}

/// A registry, or a registry and the first components of a repository path (`quay.io/org`).
/// It covers a repository equal to its path or under it, never `quay.io/organisation`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistryPrefix {
    /// As in canonical references (`index.docker.io` is `docker.io`).
    pub registry: String,
    /// Empty for a whole registry.
    pub path: String,
}

impl RegistryPrefix {
    /// `host[:port][/path/...]`: a registry name as image references write it, and optionally
    /// repository path components; no tag, digest or trailing `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, path) = text.split_once('/').unwrap_or((text, ""));
        let registry = super::canonical_registry(host)?;
        if path.is_empty() {
            return if text.ends_with('/') {
                Err(Self::not_a_prefix(text))
            } else {
                Ok(Self { registry, path: String::new() })
            };
        }
        // Path components are checked as the reference parser checks them: a repository under
        // the prefix must parse with exactly this path in front.
        let probe = format!("{registry}/{path}/pullcheck-probe");
        match ImageRef::parse(&probe) {
            Ok(r) if r.registry() == registry && r.repository() == format!("{path}/pullcheck-probe") => {
                Ok(Self { registry, path: path.to_string() })
            }
            _ => Err(Self::not_a_prefix(text)),
        }
    }

    fn not_a_prefix(text: &str) -> String {
        format!("{text:?} is not a registry or a registry/path prefix (lowercase path components, no tag or digest)")
    }

    /// The rest of the image's repository below this prefix (`""` for the prefix itself), when
    /// the prefix covers the image.
    fn remainder<'a>(&self, image: &'a ImageRef) -> Option<&'a str> {
        if image.registry() != self.registry {
            return None;
        }
        let repository = image.repository();
        if self.path.is_empty() {
            return Some(repository);
        }
        match repository.strip_prefix(self.path.as_str())? {
            "" => Some(""),
            rest => rest.strip_prefix('/'),
        }
    }

    /// Path components: a longer prefix is the more specific one.
    fn depth(&self) -> usize {
        if self.path.is_empty() { 0 } else { self.path.split('/').count() }
    }
}

impl fmt::Display for RegistryPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.registry) } else { write!(f, "{}/{}", self.registry, self.path) }
    }
}

/// One move: images under `deprecated` are now under `replacement`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deprecation {
    pub deprecated: RegistryPrefix,
    pub replacement: RegistryPrefix,
}

/// Why an override in the registry config cannot be applied; `key` is the entry as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideError {
    pub key: String,
    pub problem: String,
}

/// The table in force: the built-in moves, with the registry config's added, replaced or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeprecatedRegistries {
    entries: BTreeMap<RegistryPrefix, RegistryPrefix>,
}

impl Default for DeprecatedRegistries {
    fn default() -> Self {
        Self::built_in()
    }
}

impl DeprecatedRegistries {
    /// The built-in table (an entry that does not parse is left out; a unit test holds them all).
    pub fn built_in() -> Self {
        Self::of(BUILT_IN)
    }

    /// The built-in moved repositories (`BUILT_IN_MOVED`): a table of the same shape, with
    /// `movedRepositories` as its overrides.
    pub fn built_in_moved() -> Self {
        Self::of(BUILT_IN_MOVED)
    }

    fn of(pairs: &[(&str, &str)]) -> Self {
        let entries = pairs
            .iter()
            .filter_map(|(old, new)| Some((RegistryPrefix::parse(old).ok()?, RegistryPrefix::parse(new).ok()?)))
            .collect();
        Self { entries }
    }

    /// No deprecated registry at all.
    pub fn empty() -> Self {
        Self { entries: BTreeMap::new() }
    }

    /// Applies `deprecatedRegistries`: a prefix mapped to a replacement adds or replaces that
    /// entry, a prefix mapped to `null` removes it (removing one that is not there is not an
    /// error, so that a config outlives a release dropping a built-in entry).
    pub fn with_overrides(mut self, overrides: &BTreeMap<String, Option<String>>) -> Result<Self, OverrideError> {
        let mut seen = BTreeMap::new();
        for (key, value) in overrides {
            let error = |problem: String| OverrideError { key: key.clone(), problem };
            let deprecated = RegistryPrefix::parse(key).map_err(error)?;
            if let Some(first) = seen.insert(deprecated.clone(), key) {
                return Err(error(format!("{deprecated} is configured twice (also as {first})")));
            }
            match value {
                None => {
                    self.entries.remove(&deprecated);
                }
                Some(value) => {
                    let replacement = RegistryPrefix::parse(value).map_err(error)?;
                    if replacement == deprecated {
                        return Err(error(format!("{deprecated} cannot replace itself")));
                    }
                    self.entries.insert(deprecated, replacement);
                }
            }
        }
        Ok(self)
    }

    pub fn entries(&self) -> impl Iterator<Item = Deprecation> + '_ {
        self.entries.iter().map(|(d, r)| Deprecation { deprecated: d.clone(), replacement: r.clone() })
    }

    /// The most specific entry covering the image (`gcr.io/org/app` before `gcr.io/org`).
    pub fn lookup(&self, image: &ImageRef) -> Option<Deprecation> {
        self.entries
            .iter()
            .filter(|(deprecated, _)| deprecated.remainder(image).is_some())
            .max_by_key(|(deprecated, _)| deprecated.depth())
            .map(|(d, r)| Deprecation { deprecated: d.clone(), replacement: r.clone() })
    }

    /// The image under its replacement, when its registry (or repository) is deprecated.
    pub fn replacement(&self, image: &ImageRef) -> Option<ImageRef> {
        let entry = self.lookup(image)?;
        rewrite(image, &entry.deprecated, &entry.replacement)
    }
}

/// The same repository path below the prefix, tag and digest, under `to` instead of `from`:
/// `k8s.gcr.io/pause:3.9` → `registry.k8s.io/pause:3.9`. `None` when `from` does not cover the
/// image, or the result is not a valid reference (a whole repository moved to a bare registry).
pub fn rewrite(image: &ImageRef, from: &RegistryPrefix, to: &RegistryPrefix) -> Option<ImageRef> {
    let rest = from.remainder(image)?;
    let repository = match (to.path.as_str(), rest) {
        (path, "") => path.to_string(),
        ("", rest) => rest.to_string(),
        (path, rest) => format!("{path}/{rest}"),
    };
    let mut text = format!("{}/{repository}", to.registry);
    if let Some(tag) = image.tag() {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = image.digest() {
        text.push('@');
        text.push_str(digest);
    }
    // Parsed again so that the result is canonical (`docker.io/x` gains `library/`) and valid.
    ImageRef::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("valid test image")
    }

    fn replaced(table: &DeprecatedRegistries, s: &str) -> Option<String> {
        table.replacement(&image(s)).map(|r| r.to_string())
    }

    fn overrides(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
    }

    #[test]
    fn every_built_in_entry_parses() {
        assert_eq!(DeprecatedRegistries::built_in().entries().count(), BUILT_IN.len());
        assert_eq!(DeprecatedRegistries::built_in_moved().entries().count(), BUILT_IN_MOVED.len());
    }

    #[test]
    fn bitnami_moved_to_bitnamilegacy() {
        let moved = DeprecatedRegistries::built_in_moved();
        assert_eq!(replaced(&moved, "bitnami/redis:7.2.4").as_deref(), Some("docker.io/bitnamilegacy/redis:7.2.4"));
        assert_eq!(
            replaced(&moved, "index.docker.io/bitnami/postgresql:16").as_deref(),
            Some("docker.io/bitnamilegacy/postgresql:16")
        );
        for untouched in
            ["bitnamilegacy/redis:7", "docker.io/bitnamicharts/redis:1", "redis:7", "quay.io/bitnami/redis:7"]
        {
            assert_eq!(replaced(&moved, untouched), None, "{untouched}");
        }
        assert_eq!(replaced(&DeprecatedRegistries::built_in(), "bitnami/redis:7"), None, "not a deprecated registry");
    }

    #[test]
    fn built_in_lookups() {
        let table = DeprecatedRegistries::built_in();
        assert_eq!(replaced(&table, "k8s.gcr.io/pause:3.9").as_deref(), Some("registry.k8s.io/pause:3.9"));
        assert_eq!(
            replaced(&table, "gcr.io/google-containers/pause-amd64:3.1").as_deref(),
            Some("registry.k8s.io/pause-amd64:3.1")
        );
        assert_eq!(
            replaced(&table, "quay.io/kubernetes-ingress-controller/nginx-ingress-controller:0.33.0").as_deref(),
            Some("registry.k8s.io/ingress-nginx/controller:0.33.0")
        );
        for untouched in [
            "registry.k8s.io/pause:3.9",
            "gcr.io/google-containers-extra/app:1",
            "gcr.io/other/app:1",
            "quay.io/kubernetes-ingress-controller/other:1",
            "nginx",
        ] {
            assert_eq!(replaced(&table, untouched), None, "{untouched}");
        }
        let entry = table.lookup(&image("k8s.gcr.io/ingress-nginx/controller:v1.0.0")).expect("deprecated");
        assert_eq!(entry.deprecated.to_string(), "k8s.gcr.io");
    }

    #[test]
    fn rewrites_keep_tag_digest_and_the_path_below_the_prefix() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let from = RegistryPrefix::parse("old.example/team").expect("prefix");
        let to = RegistryPrefix::parse("new.example:5000/platform/team").expect("prefix");
        let cases = [
            ("old.example/team/app:v1".to_string(), Some("new.example:5000/platform/team/app:v1".to_string())),
            (format!("old.example/team/app@{digest}"), Some(format!("new.example:5000/platform/team/app@{digest}"))),
            (
                format!("old.example/team/a/b:v2@{digest}"),
                Some(format!("new.example:5000/platform/team/a/b:v2@{digest}")),
            ),
            ("old.example/team:v1".to_string(), Some("new.example:5000/platform/team:v1".to_string())),
            ("old.example/teams/app:v1".to_string(), None),
            ("other.example/team/app:v1".to_string(), None),
        ];
        for (given, expected) in cases {
            assert_eq!(rewrite(&image(&given), &from, &to).map(|r| r.to_string()), expected, "{given}");
        }
        // To a bare registry: the path below the prefix alone; Docker Hub's `library/` as the
        // runtime would add it; a whole repository moved to a bare registry has no name left.
        let hub = RegistryPrefix::parse("docker.io").expect("prefix");
        assert_eq!(
            rewrite(&image("old.example/team/app:v1"), &from, &hub).map(|r| r.to_string()),
            Some("docker.io/library/app:v1".into())
        );
        assert_eq!(rewrite(&image("old.example/team:v1"), &from, &hub), None);
    }

    #[test]
    fn the_most_specific_prefix_wins() {
        let table = DeprecatedRegistries::empty()
            .with_overrides(&overrides(&[("r.example", Some("a.example")), ("r.example/team", Some("b.example/t"))]))
            .expect("valid");
        assert_eq!(replaced(&table, "r.example/team/app:1").as_deref(), Some("b.example/t/app:1"));
        assert_eq!(replaced(&table, "r.example/other/app:1").as_deref(), Some("a.example/other/app:1"));
    }

    #[test]
    fn overrides_add_replace_and_remove() {
        let table = DeprecatedRegistries::built_in()
            .with_overrides(&overrides(&[
                ("k8s.gcr.io", None),
                ("old.example", Some("new.example")),
                ("index.docker.io/bitnami", Some("docker.io/bitnamilegacy")),
                ("gcr.io/google-containers", Some("mirror.example/k8s")),
                ("never.example", None),
            ]))
            .expect("valid");
        assert_eq!(replaced(&table, "k8s.gcr.io/pause:3.9"), None, "removed");
        assert_eq!(replaced(&table, "old.example/x:1").as_deref(), Some("new.example/x:1"));
        assert_eq!(replaced(&table, "bitnami/redis:7").as_deref(), Some("docker.io/bitnamilegacy/redis:7"));
        assert_eq!(
            replaced(&table, "gcr.io/google-containers/pause:3.1").as_deref(),
            Some("mirror.example/k8s/pause:3.1")
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "k8s", "k8s.gcr.io/", "quay.io/Org", "quay.io/org:1", "quay.io/org@sha256:x", "a b.example"] {
            assert!(RegistryPrefix::parse(bad).is_err(), "{bad:?}");
        }
        let error = |pairs: &[(&str, Option<&str>)]| {
            DeprecatedRegistries::built_in().with_overrides(&overrides(pairs)).expect_err("refused")
        };
        assert_eq!(error(&[("old.example", Some("old.example"))]).problem, "old.example cannot replace itself");
        assert_eq!(error(&[("old.example", Some("Bad Host"))]).key, "old.example");
        let twice = error(&[("docker.io/team", Some("a.example")), ("index.docker.io/team", Some("b.example"))]);
        assert!(twice.problem.contains("configured twice"), "{twice:?}");
    }
}
