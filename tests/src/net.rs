//! Loopback networking: a free port for a server a test starts, and a bare HTTP GET for
//! checking what a server answers.

use std::io::{Read, Write};
use std::time::Duration;

/// A loopback port nothing listens on now, picked by the OS (for a server that takes its
/// port from its command line; another process could take it before the server binds it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// `GET /` on `addr`, the body.
pub fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}
