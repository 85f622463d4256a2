//! Image reference parsing and normalisation, as Docker and containerd do it
//! (`distribution/reference.ParseNormalizedNamed` followed by containerd's
//! `ParseDockerRef`), so that the names kubelet sends, the names we store and the
//! names `crictl images` shows agree with every other runtime.
//!
//! Grammar (from distribution/reference):
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain "/"] path
//! domain           := host [":" port]
//! host             := domain-name | "[" [a-fA-F0-9:]+ "]"
//! domain-name      := component ("." component)*
//! component        := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! port             := [0-9]+
//! path             := path-component ("/" path-component)*
//! path-component   := [a-z0-9]+ (separator [a-z0-9]+)*
//! separator        := [._] | "__" | "-"+
//! tag              := [\w][\w.-]{0,127}
//! digest           := algorithm ":" hex      (sha256: 64, sha384: 96, sha512: 128 lowercase hex)
//! ```
//!
//! Hand-written rather than with a regex crate: the grammar is small and this keeps
//! the dependency tree as it is.

use std::fmt;
use std::str::FromStr;

/// Registry used when a reference names none.
const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's historical registry name, normalised to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of single-component Docker Hub names (`busybox` → `library/busybox`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Longest `domain/path` distribution accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A normalised image reference: always a domain and a path, and (after
/// [`Reference::parse`]) exactly one of tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ParseError {
    pub input: String,
    pub reason: String,
}

impl Reference {
    /// Normalised as ParseDockerRef: default tag `latest` when neither tag nor digest;
    /// tag dropped when a digest is present.
    pub fn parse(s: &str) -> Result<Reference, ParseError> {
        let fail = |reason: String| ParseError {
            input: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(fail(
                "repository name must have at least one component".into(),
            ));
        }
        // Docker refuses what looks like an image ID where a name is expected.
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail(
                "cannot specify 64-byte hexadecimal strings as a repository name".into(),
            ));
        }

        let (domain, remainder) = split_docker_domain(s);
        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (remainder.as_str(), None),
        };
        // A path never holds ':', so any ':' left (the domain is split off) starts the tag.
        let (path, tag) = match name_and_tag.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (name_and_tag, None),
        };

        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail(format!("repository name ({path}) must be lowercase")));
        }
        validate_domain(domain).map_err(&fail)?;
        validate_path(path).map_err(&fail)?;
        let name_len = domain.len() + 1 + path.len();
        if name_len > NAME_TOTAL_LENGTH_MAX {
            return Err(fail(format!(
                "repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            )));
        }
        if let Some(tag) = tag {
            validate_tag(tag).map_err(&fail)?;
        }
        if let Some(digest) = digest {
            validate_digest(digest).map_err(&fail)?;
        }

        let (tag, digest) = match (tag, digest) {
            // ParseDockerRef: a digest pins the content, the tag is only decoration.
            (_, Some(d)) => (None, Some(d.to_owned())),
            (Some(t), None) => (Some(t.to_owned()), None),
            (None, None) => (Some(DEFAULT_TAG.to_owned()), None),
        };
        Ok(Reference {
            domain: domain.to_owned(),
            path: path.to_owned(),
            tag,
            digest,
        })
    }

    /// The repository name without tag or digest, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same repository at `tag` (any digest dropped).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// The same repository at `digest` (any tag dropped).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_owned()),
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else
    /// the tag (`latest` if, in a hand-built value, there is neither).
    pub fn tag_or_digest(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// distribution's `splitDockerDomain`: the first `/`-separated component is a domain
/// when it contains `.` or `:`, is `localhost`, or has uppercase letters (which a path
/// may not); otherwise the name lives on Docker Hub, under `library/` if it has a
/// single component.
fn split_docker_domain(s: &str) -> (&str, String) {
    let (domain, remainder) = match s.split_once('/') {
        None => (DEFAULT_DOMAIN, s),
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        Some(_) => (DEFAULT_DOMAIN, s),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        (domain, format!("{OFFICIAL_REPO_PREFIX}{remainder}"))
    } else {
        (domain, remainder.to_owned())
    }
}

/// `host [":" port]`, host a DNS-ish name, dotted IPv4 or bracketed IPv6.
fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = || format!("invalid domain {domain:?}");
    let (host_ok, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let ok = !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (ok, port)
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        };
        (host.split('.').all(is_domain_component), port)
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `path-component ("/" path-component)*`
fn validate_path(path: &str) -> Result<(), String> {
    if path.split('/').all(is_path_component) {
        Ok(())
    } else {
        Err(format!("invalid repository path {path:?}"))
    }
}

/// `[a-z0-9]+ (([._] | "__" | "-"+) [a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        // One run of alphanumerics, which must not be empty.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // One separator.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    let ok = b.len() <= TAG_LENGTH_MAX
        && b.first().is_some_and(|&f| word(f))
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

/// distribution's digest pattern, then go-digest's check for the algorithms it
/// knows (anything else is unsupported there too).
fn validate_digest(digest: &str) -> Result<(), String> {
    let bad = || format!("invalid digest {digest:?}");
    let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|c| {
        c.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm {algorithm:?}")),
    };
    if hex.len() == want && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

    fn digest() -> String {
        format!("sha256:{H}")
    }

    /// (input, Some(normalised string) | None for invalid)
    fn table() -> Vec<(String, Option<String>)> {
        let d = digest();
        let ok = |i: &str, o: &str| (i.to_owned(), Some(o.to_owned()));
        let err = |i: &str| (i.to_owned(), None);
        vec![
            ok("busybox", "docker.io/library/busybox:latest"),
            ok("busybox:1.36", "docker.io/library/busybox:1.36"),
            ok("user/img", "docker.io/user/img:latest"),
            ok("docker.io/busybox", "docker.io/library/busybox:latest"),
            ok(
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ok("index.docker.io/u/r:t", "docker.io/u/r:t"),
            ok(
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ok("localhost/x", "localhost/x:latest"),
            ok("localhost:5000/x", "localhost:5000/x:latest"),
            ok("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ok(
                "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
            ),
            ok("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
            ok("[::1]:5000/x:y", "[::1]:5000/x:y"),
            ok("[fe80::1]/x", "[fe80::1]/x:latest"),
            ok("example.com/a/b/c/d", "example.com/a/b/c/d:latest"),
            // A single-component name not on Docker Hub gets no library/ prefix.
            ok("example.com/x", "example.com/x:latest"),
            // Uppercase first component: a domain, as in distribution.
            ok("Foo.example/bar", "Foo.example/bar:latest"),
            ok("Foo/bar", "Foo/bar:latest"),
            ok("a.b-c_d__e---f", "docker.io/library/a.b-c_d__e---f:latest"),
            ok("busybox:Tag_1.0-rc", "docker.io/library/busybox:Tag_1.0-rc"),
            ok(
                &format!("busybox:{}", "t".repeat(128)),
                &format!("docker.io/library/busybox:{}", "t".repeat(128)),
            ),
            ok(
                &format!("busybox@{d}"),
                &format!("docker.io/library/busybox@{d}"),
            ),
            ok(
                &format!("busybox:1.36@{d}"),
                &format!("docker.io/library/busybox@{d}"),
            ),
            ok(
                &format!("localhost:5000/x:y@{d}"),
                &format!("localhost:5000/x@{d}"),
            ),
            ok(
                &format!("busybox@sha512:{}", "ab".repeat(64)),
                &format!("docker.io/library/busybox@sha512:{}", "ab".repeat(64)),
            ),
            // Only a bare ID is refused; as a tag it is fine.
            ok(&format!("{H}:t"), &format!("docker.io/library/{H}:t")),
            // Familiar name with a tag that looks like a port.
            ok("localhost:5000", "docker.io/library/localhost:5000"),
            // Cases from distribution/reference's own tests.
            ok("192.168.0.1", "docker.io/library/192.168.0.1:latest"),
            ok("test.com:5000", "docker.io/library/test.com:5000"),
            ok("test_com/foo", "docker.io/test_com/foo:latest"),
            ok("DOCKER/docker", "DOCKER/docker:latest"),
            ok("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest"),
            ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo:latest"),
            ok(
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io/test.example.com/my-app:test.example.com",
            ),
            ok(
                &format!("docker.io/{H}"),
                &format!("docker.io/library/{H}:latest"),
            ),
            err(""),
            err("https://github.com/docker/docker"),
            err("docker///docker"),
            err("fc00::1:5000/debian"),
            err("[fe80::1%eth0]:5000/debian"),
            err("[2001:db8:3:4::192.0.2.33]:5000/debian"),
            err("[2001:db8::1]:5000"),
            err("dock_.er/docker"),
            err("____/____"),
            err(&format!("validname@invaliddigest:{H}")),
            err(&format!("{}a:tag", "a/".repeat(128))),
            err(H),
            err("UPPER"),
            err("docker.io/UPPER"),
            err("user/Img"),
            err("a:"),
            err(":tag"),
            err("a@"),
            err("@sha256:abc"),
            err("a@sha256:short"),
            err(&format!("a@sha256:{}", H.to_uppercase())),
            err(&format!("a@sha256:{H}0")),
            err(&format!("a@md5:{H}")),
            err(&format!("a@{H}")),
            err("a//b"),
            err("a/"),
            err("/a"),
            err("-a"),
            err("a-"),
            err("a..b"),
            err("a___b"),
            err("a._b"),
            err("a b"),
            err("a:b:c"),
            err(&format!("busybox:{}", "t".repeat(129))),
            err("busybox:.tag"),
            err("busybox:-tag"),
            err("busybox:t@g"),
            err("a:b/c"),
            err("-example.com/x"),
            err("example-.com/x"),
            err("example.com:/x"),
            err("example.com:50a/x"),
            err("[::1/x"),
            err("[]/x"),
            err("[::1]x/y"),
            err("[::g]/x"),
            err("a_b.com/x"),
            err(&format!("example.com/{}", "a".repeat(244))),
        ]
    }

    #[test]
    fn parse_table() {
        let mut failures = Vec::new();
        for (input, want) in table() {
            let got = Reference::parse(&input);
            match (&got, &want) {
                (Ok(r), Some(w)) if r.to_string() == *w => {
                    // Round trip: the normalised form parses to itself.
                    let again = Reference::parse(w).expect("normalised form must parse");
                    assert_eq!(&again, r, "round trip of {w}");
                }
                (Err(e), None) => assert_eq!(e.input, input),
                _ => failures.push(format!("{input:?}: got {got:?}, want {want:?}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(table().len() >= 30);
    }

    #[test]
    fn fields() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            r,
            Reference {
                domain: "docker.io".into(),
                path: "library/busybox".into(),
                tag: Some("latest".into()),
                digest: None,
            }
        );
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tag_or_digest(), "latest");

        let r = Reference::parse("[::1]:5000/x:y").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str()), ("[::1]:5000", "x"));
        assert_eq!(r.tag.as_deref(), Some("y"));

        let r = Reference::parse(&format!("localhost:5000/a/b:c@{}", digest())).unwrap();
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(digest().as_str()));
        assert_eq!(r.tag_or_digest(), digest());
    }

    #[test]
    fn with_tag_and_digest() {
        let r = Reference::parse("registry.k8s.io/pause:3.10").unwrap();
        let d = r.with_digest(&digest());
        assert_eq!(d.to_string(), format!("registry.k8s.io/pause@{}", digest()));
        assert_eq!(d.tag, None);
        let t = d.with_tag("3.9");
        assert_eq!(t.to_string(), "registry.k8s.io/pause:3.9");
        assert_eq!(t.digest, None);
        assert_eq!(t.tag_or_digest(), "3.9");
        let bare = Reference {
            tag: None,
            ..t.clone()
        };
        assert_eq!(bare.to_string(), "registry.k8s.io/pause");
        assert_eq!(bare.tag_or_digest(), "latest");
        assert_eq!("registry.k8s.io/pause:3.9".parse::<Reference>().unwrap(), t);
    }

    #[test]
    fn error_message_names_input() {
        let e = Reference::parse("UPPER").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid image reference \"UPPER\": "),
            "{msg}"
        );
        assert!(msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn name_length_limit() {
        // docker.io/library/ is 18 characters; 237 more reach exactly 255.
        let ok = "a".repeat(237);
        assert_eq!(Reference::parse(&ok).unwrap().name().len(), 255);
        assert!(Reference::parse(&"a".repeat(238)).is_err());
    }
}
