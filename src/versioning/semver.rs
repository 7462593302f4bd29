//! Versions of the API and of its clients, in semantic version order:
//! `1.10.0 > 1.9.9`, `2.0.0-beta.2 < 2.0.0`, `v2 = 2 = 2.0 = 2.0.0`.
//!
//! Accepted forms, after an optional `v`/`V`:
//! - one to four numeric components separated by dots (`2`, `1.4`, `1.10.0`, `1.2.3.4`), then an
//!   optional semver pre-release (`-beta.1`) and build (`+sha.5114f85`; ignored when comparing);
//! - a date `YYYY-MM-DD` (Stripe style), ordered as the numbers year, month, day.
//!
//! Missing components count as 0, so `2` and `2.0.0` are the same version.

use std::cmp::Ordering;
use std::fmt;

/// Longest version text accepted, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// A parsed version; compares in semantic version order, displays as it was written.
#[derive(Debug, Clone)]
pub struct Version {
    core: Vec<u64>,
    pre: Vec<Identifier>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Identifier {
    Numeric(u64),
    Alpha(String),
}

impl Ord for Identifier {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Identifier::Numeric(a), Identifier::Numeric(b)) => a.cmp(b),
            // numeric identifiers have lower precedence than alphanumeric ones (semver 11.4.3)
            (Identifier::Numeric(_), Identifier::Alpha(_)) => Ordering::Less,
            (Identifier::Alpha(_), Identifier::Numeric(_)) => Ordering::Greater,
            (Identifier::Alpha(a), Identifier::Alpha(b)) => a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

impl PartialOrd for Identifier {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a text is not a version; displays as a lower-case reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

impl Version {
    /// Parses a version; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Version, ParseError> {
        let text = text.trim();
        if text.is_empty() {
            return err("a version must not be empty");
        }
        if text.len() > MAX_VERSION_LEN {
            return err(format!("a version has at most {MAX_VERSION_LEN} characters"));
        }
        let body = text.strip_prefix(['v', 'V']).unwrap_or(text);
        if looks_like_date(body) {
            return match date(body) {
                Some(core) => Ok(Version { core, pre: Vec::new(), text: text.to_owned() }),
                None => err(format!("\"{body}\" is not a date")),
            };
        }
        let (body, build) = match body.split_once('+') {
            Some((body, build)) => (body, Some(build)),
            None => (body, None),
        };
        if let Some(build) = build {
            identifiers("build", build)?;
        }
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => (core, identifiers("pre-release", pre)?),
            None => (body, Vec::new()),
        };
        let mut parts = Vec::new();
        for part in core.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return err(format!("\"{core}\" is not numbers separated by dots"));
            }
            match part.parse::<u64>() {
                Ok(n) if part.len() <= 18 => parts.push(n),
                _ => return err(format!("\"{part}\" is too large for a version number")),
            }
        }
        if parts.len() > 4 {
            return err("a version has at most 4 numbers");
        }
        Ok(Version { core: parts, pre, text: text.to_owned() })
    }

    /// The version as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn component(&self, i: usize) -> u64 {
        self.core.get(i).copied().unwrap_or(0)
    }
}

/// `NNNN-NN-NN`: a date, valid or not (not a pre-release of version NNNN).
fn looks_like_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10 && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

/// `YYYY-MM-DD` as [year, month, day], or None.
fn date(text: &str) -> Option<Vec<u64>> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r.clone()].iter().all(u8::is_ascii_digit).then(|| text[r].parse::<u64>().ok()).flatten();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then(|| vec![year, month, day])
}

/// Dot-separated identifiers of `[0-9A-Za-z-]`, as a pre-release or build.
fn identifiers(what: &str, text: &str) -> Result<Vec<Identifier>, ParseError> {
    let mut out = Vec::new();
    for id in text.split('.') {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return err(format!("the {what} \"{text}\" is not dot-separated letters, digits and hyphens"));
        }
        out.push(match id.parse::<u64>() {
            Ok(n) if id.bytes().all(|b| b.is_ascii_digit()) => Identifier::Numeric(n),
            _ => Identifier::Alpha(id.to_owned()),
        });
    }
    Ok(out)
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.core.len().max(other.core.len());
        for i in 0..len {
            match self.component(i).cmp(&other.component(i)) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        // a pre-release is below its release (semver 11.3), then identifier by identifier
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.pre.cmp(&other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn semantic_order_not_text_order() {
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("1.9.9") < v("1.10.0"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("10") > v("9.9"));
        assert!(v("1.0.10") > v("1.0.9"));
        assert!("1.10.0" < "1.9.9", "the text order is the wrong one");
    }

    #[test]
    fn missing_components_are_zero_and_v_is_optional() {
        assert_eq!(v("2"), v("2.0.0"));
        assert_eq!(v("v2"), v("2.0"));
        assert_eq!(v("V1.2"), v("1.2.0"));
        assert_eq!(v(" 1.2.3 ").as_str(), "1.2.3");
        assert_eq!(v("v2").to_string(), "v2", "displays as written");
        assert!(v("1.2.3.4") > v("1.2.3"));
    }

    #[test]
    fn pre_releases_and_builds() {
        // the example order of semver 11.4
        let order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
                     "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"];
        for pair in order.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("1.0.0+build.7"), v("1.0.0"), "build metadata is ignored");
        assert_eq!(v("1.0.0-rc.1+x"), v("1.0.0-rc.1"));
        assert!(v("1.0.0-rc.1") > v("0.9.9"));
    }

    #[test]
    fn dates() {
        assert!(v("2024-06-20") > v("2024-04-10"));
        assert!(v("2025-01-01") > v("2024-12-31"));
        assert_eq!(v("2024-06-20"), v("2024.6.20"));
        assert!(Version::parse("2024-13-01").is_err(), "no month 13");
    }

    #[test]
    fn what_is_not_a_version() {
        for bad in ["", " ", "v", "latest", "1..2", "1.", ".1", "1.2.3.4.5", "1.x", "1.0.0-", "1.0.0+",
                    "1.0.0-be ta", "1.0.0-a..b", "99999999999999999999", "-1"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} must not parse");
        }
        assert_eq!(Version::parse("1.x").unwrap_err().to_string(), "\"1.x\" is not numbers separated by dots");
        assert!(Version::parse(&"1".repeat(65)).is_err());
    }
}
