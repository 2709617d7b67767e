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

#[cfg(test)]
mod tests {
    use super::*;

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
