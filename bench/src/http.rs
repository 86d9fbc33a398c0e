//! The least HTTP/1.1 client that drives the daemon's API the way a busy client does: one
//! kept-alive connection on its Unix socket, a request at a time, blocking std I/O (the
//! benchmark's clients share two cores with the daemons and PostgreSQL, so they must cost
//! little). Answers must carry `Content-Length`, as every answer of the daemon does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest answer read (the daemon's task records and `/metrics` are far smaller).
const MAX_BODY: usize = 64 << 20;

/// One connection to the API on `socket`, opened again when the daemon closed it.
pub struct Conn {
    socket: PathBuf,
    stream: Option<BufReader<UnixStream>>,
}

impl Conn {
    /// A client of the API on `socket` (connected at the first request).
    pub fn new(socket: &Path) -> Conn {
        Conn { socket: socket.to_path_buf(), stream: None }
    }

    /// Sends `method path` with `body` (JSON) and returns the answer's status and body.
    /// A connection that fails is opened again once and the request sent again: a task
    /// sent twice is accepted once (its id is known the second time).
    ///
    /// # Errors
    /// When the daemon cannot be reached or answers something that is not HTTP/1.1 with
    /// a `Content-Length`.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        match self.once(method, path, body) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.stream = None;
                self.once(method, path, body).map_err(|e| format!("{method} {path} on {}: {e}", self.socket.display()))
            }
        }
    }

    fn once(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        if self.stream.is_none() {
            let stream = UnixStream::connect(&self.socket).map_err(|e| format!("cannot connect: {e}"))?;
            // Far beyond any answer, so that a daemon that hangs fails the run instead of
            // stalling it.
            stream.set_read_timeout(Some(Duration::from_secs(300))).map_err(|e| e.to_string())?;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let sent =
            stream.get_mut().write_all(head.as_bytes()).and_then(|()| stream.get_mut().write_all(body.as_bytes()));
        sent.map_err(|e| format!("cannot send: {e}"))?;
        let (status, body, close) = read_answer(stream)?;
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// Reads one answer: its status, its body, and whether the server closes the connection.
fn read_answer(r: &mut impl BufRead) -> Result<(u16, String, bool), String> {
    let mut line = String::new();
    let mut next = |line: &mut String| {
        line.clear();
        match r.read_line(line) {
            Ok(0) => Err("the connection closed before an answer".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot read the answer: {e}")),
        }
    };
    next(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {:?}", line.trim_end()))?;
    let (mut length, mut close) = (None, false);
    loop {
        next(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "transfer-encoding" => return Err(format!("a {value} answer (this client reads Content-Length only)")),
            _ => {}
        }
    }
    let length = length.ok_or("an answer without Content-Length")?;
    if length > MAX_BODY {
        return Err(format!("an answer of {length} bytes, over {MAX_BODY}"));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).map_err(|e| format!("cannot read the answer's body: {e}"))?;
    let body = String::from_utf8(body).map_err(|_| "an answer that is not UTF-8".to_owned())?;
    Ok((status, body, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_one_after_another_on_one_connection() {
        let two = "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}\
                   HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let mut r = BufReader::new(two.as_bytes());
        assert_eq!(read_answer(&mut r).unwrap(), (202, "{\"a\":1}".to_owned(), false));
        assert_eq!(read_answer(&mut r).unwrap(), (200, "{}".to_owned(), true));
        assert!(read_answer(&mut r).unwrap_err().contains("closed"));
    }

    #[test]
    fn answers_it_cannot_read_are_errors() {
        for (answer, why) in [
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "Content-Length only"),
            ("HTTP/1.1 200 OK\r\n\r\n", "without Content-Length"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "body"),
            ("SSH-2.0-OpenSSH\r\n", "not an HTTP/1.1 status line"),
        ] {
            let err = read_answer(&mut BufReader::new(answer.as_bytes())).unwrap_err();
            assert!(err.contains(why), "{answer:?}: {err}");
        }
    }
}
