//! Image references, checked before anything is created: the engine only
//! refuses a malformed one at create or pull time, after the task's record
//! and workspace exist.

/// Checks `reference` against the grammar engines accept:
/// `[host[:port]/]path[/path...][:tag][@algorithm:hex]`, path components
/// lowercase. Returns what is wrong, on one line.
pub(crate) fn validate_reference(reference: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid image reference {reference:?}: {why}"));
    if reference.is_empty() {
        return bad("it is empty");
    }
    if reference.len() > 255 {
        return bad("longer than 255 characters");
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return bad("a digest is ALGORITHM:HEX");
        };
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("a digest is ALGORITHM:HEX (at least 32 hex digits)");
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let mut bytes = tag.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first_ok
            || tag.len() > 128
            || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad("a tag is letters, digits, '_', '.' and '-' (at most 128)");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        let is_host = first.contains(['.', ':']) || first == "localhost";
        if is_host {
            let (host, port) = match first.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            let port_ok =
                port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !host_ok || !port_ok {
                return bad("the registry host is malformed");
            }
            components.remove(0);
        }
    }
    for component in components {
        if !path_component_ok(component) {
            return bad(
                "each name component is lowercase letters and digits, separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_docker_accepts() {
        for good in [
            "alpine",
            "orch-agent:dev",
            "library/ubuntu:22.04",
            "localhost:5000/team/app:v1.2-rc_3",
            "registry.example.com/a/b/c",
            "my__image",
            "a--b",
            "x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "x:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(validate_reference(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for bad in [
            "",
            "Not A//valid::ref",
            "UPPER",
            "a//b",
            "a:",
            "a:-tag",
            "-a",
            "a.",
            "a@sha256:xyz",
            "a b",
            "host:port/x",
        ] {
            let err = validate_reference(bad).expect_err(bad);
            assert!(err.contains("invalid image reference"), "{err}");
        }
    }
}
