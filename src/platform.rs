//! Platforms (`linux/arm64/v8`) and whether an image index covers the ones the nodes need:
//! the runtime's pull fails with "no match for platform in manifest" when it does not.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let architecture = match architecture {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        // containerd's defaults: arm64 is v8, arm is v7.
        let variant = variant.filter(|v| !v.is_empty()).filter(|v| !(architecture == "arm64" && *v == "v8"));
        let variant = match (architecture, variant) {
            ("arm", None) => Some("v7"),
            (_, v) => v,
        };
        Self { os: os.to_string(), architecture: architecture.to_string(), variant: variant.map(str::to_string) }
    }

    /// Whether an index entry for `offered` runs here.
    pub fn is_served_by(&self, offered: &Platform) -> bool {
        self.os == offered.os && self.architecture == offered.architecture && self.variant == offered.variant
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let valid = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts[..] {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(format!("invalid platform {s:?}: expected os/arch or os/arch/variant (linux/arm64)")),
        }
    }
}

/// The required platforms no offered one serves.
pub fn missing<'a>(required: &'a [Platform], offered: &[Platform]) -> Vec<&'a Platform> {
    required.iter().filter(|r| !offered.iter().any(|o| r.is_served_by(o))).collect()
}

/// Node labels that name a node's platform, as the scheduler sees them.
const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];
const ARCH_LABELS: [&str; 2] = ["kubernetes.io/arch", "beta.kubernetes.io/arch"];

/// One `matchExpressions` entry of a required node-affinity term, on a platform label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformExpression {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// Where a workload can be scheduled, as far as platforms go: its `nodeSelector` and its
/// required node affinity, on the `kubernetes.io/os` and `kubernetes.io/arch` labels only
/// (other labels do not change which platforms it may land on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformConstraints {
    /// `nodeSelector` entries on platform labels: all must hold.
    pub node_selector: Vec<(String, String)>,
    /// `nodeSelectorTerms`, each the AND of its platform expressions; one term must hold.
    /// A term with no platform expression admits every platform.
    pub terms: Vec<Vec<PlatformExpression>>,
}

impl PlatformConstraints {
    /// Whether a label key names a node's platform.
    pub fn is_platform_label(key: &str) -> bool {
        OS_LABELS.contains(&key) || ARCH_LABELS.contains(&key)
    }

    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.terms.is_empty()
    }

    /// Whether a node of this platform can run the workload.
    pub fn admits(&self, platform: &Platform) -> bool {
        let label = |key: &str| {
            if OS_LABELS.contains(&key) {
                Some(platform.os.as_str())
            } else if ARCH_LABELS.contains(&key) {
                Some(platform.architecture.as_str())
            } else {
                None
            }
        };
        let selector_holds = self.node_selector.iter().all(|(k, v)| label(k).is_none_or(|l| l == v));
        let term_holds = |term: &Vec<PlatformExpression>| {
            term.iter().all(|e| match (label(&e.key), e.operator.as_str()) {
                (None, _) => true,
                (Some(l), "In") => e.values.iter().any(|v| v == l),
                (Some(l), "NotIn") => !e.values.iter().any(|v| v == l),
                (Some(_), "Exists") => true,
                (Some(_), "DoesNotExist") => false,
                // Gt and Lt on a platform label match nothing numeric; the API server refuses
                // unknown operators. Neither narrows here.
                (Some(_), _) => true,
            })
        };
        selector_holds && (self.terms.is_empty() || self.terms.iter().any(term_holds))
    }

    /// The platforms of `nodes` the workload can run on.
    pub fn narrow(&self, nodes: &[Platform]) -> Vec<Platform> {
        nodes.iter().filter(|p| self.admits(p)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_narrow_the_nodes_platforms() {
        let nodes = [p("linux/amd64"), p("linux/arm64"), p("windows/amd64")];
        let pinned = PlatformConstraints {
            node_selector: vec![("kubernetes.io/arch".into(), "arm64".into()), ("disktype".into(), "ssd".into())],
            terms: vec![],
        };
        assert_eq!(pinned.narrow(&nodes), vec![p("linux/arm64")]);
        let expression = |key: &str, operator: &str, values: &[&str]| PlatformExpression {
            key: key.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let affinity = PlatformConstraints {
            node_selector: vec![],
            terms: vec![
                vec![
                    expression("kubernetes.io/os", "In", &["linux"]),
                    expression("kubernetes.io/arch", "NotIn", &["arm64"]),
                ],
                vec![expression("kubernetes.io/os", "In", &["windows"])],
            ],
        };
        assert_eq!(affinity.narrow(&nodes), vec![p("linux/amd64"), p("windows/amd64")], "terms are ORed");
        let other_labels_only = PlatformConstraints {
            node_selector: vec![],
            terms: vec![vec![expression("topology.kubernetes.io/zone", "In", &["a"])]],
        };
        assert_eq!(other_labels_only.narrow(&nodes).len(), 3);
        assert_eq!(PlatformConstraints::default().narrow(&nodes).len(), 3);
    }

    fn p(s: &str) -> Platform {
        s.parse().expect("valid platform")
    }

    #[test]
    fn parsing_and_defaults() {
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm"), p("linux/arm/v7"));
        assert_ne!(p("linux/arm/v6"), p("linux/arm"));
        assert_eq!(p("windows/amd64").to_string(), "windows/amd64");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn coverage() {
        let offered = [p("linux/amd64"), Platform::new("linux", "arm64", Some("v8"))];
        let required = [p("linux/amd64"), p("linux/arm64"), p("linux/s390x")];
        assert_eq!(missing(&required, &offered), vec![&p("linux/s390x")]);
        assert!(missing(&required[..2], &offered).is_empty());
    }
}
