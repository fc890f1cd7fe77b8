//! Real servers for orch's tests, started and stopped by the tests
//! themselves: a PostgreSQL server ([`postgres`]) and extra Docker engines
//! standing for extra hosts ([`dockerd`]). Nothing here is a mock.

#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod dockerd;
pub mod postgres;

/// True if the suite must not skip tests for want of a real part
/// (`ORCH_REQUIRE_DOCKER=1`, as CI runs it).
pub fn required() -> bool {
    std::env::var("ORCH_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// A free TCP port on loopback (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
