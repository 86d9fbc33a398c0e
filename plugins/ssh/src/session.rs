//! An authenticated SSH connection and the commands run over it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loom_plugin_sdk::{CancellationToken, OutputStream};
use loom_protocol::backoff::Backoff;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

use crate::{Auth, HostKeys, SshError, Target};

/// A logged-in SSH connection.
pub struct Session {
    handle: Handle<Checker>,
    addr: String,
    host_key: PublicKey,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(u32),
    /// It was killed by this signal.
    Signal(String),
    /// The server closed the channel without saying.
    Unknown,
}

impl Exit {
    /// Whether the command succeeded.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// A status for a task result: the exit code, or 1.
    pub fn status(&self) -> i64 {
        match self {
            Exit::Code(c) => i64::from(*c),
            _ => 1,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by signal {s}"),
            Exit::Unknown => f.write_str("ended without an exit status"),
        }
    }
}

/// Accepts the server's key if it is pinned (or nothing is), and remembers what it saw.
struct Checker {
    pinned: HostKeys,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = key.public_key();
        let ok = self.pinned.accepts(&key);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key);
        }
        Ok(ok)
    }
}

impl Session {
    /// Connects, checks the host key and logs in, all within `limit`. A connection the
    /// server drops during the handshake is tried again, with backoff (100 ms doubling to
    /// 2 s, jittered), until `limit`: sshd drops new connections at random beyond its
    /// `MaxStartups` (10 by default), which many concurrent tasks to one host easily reach.
    ///
    /// # Errors
    /// A distinct [`SshError`] for: connection refused, unreachable, no answer in time,
    /// host key changed, credentials refused, unusable private key.
    pub async fn connect(target: &Target, limit: Duration) -> Result<Session, SshError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match Session::connect_once(target, limit, deadline).await {
                Err(SshError::Session { .. }) if tokio::time::Instant::now() + backoff.delay() < deadline => {
                    tracing::debug!("{target:?}: connection dropped during the handshake; trying again");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(
        target: &Target,
        limit: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Session, SshError> {
        let addr = target.addr();
        let timeout = || SshError::Timeout { addr: addr.clone(), secs: limit.as_secs().max(1) };
        let stream =
            tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((target.host.as_str(), target.port)))
                .await
                .map_err(|_| timeout())?
                .map_err(|e| connect_error(&addr, &e))?;
        let _ = stream.set_nodelay(true);

        // Scripts may run silently for a long time: no inactivity limit, but keepalives so
        // that a host that vanished is noticed (after three unanswered ones).
        let mut config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        if !target.host_keys.0.is_empty() {
            // Ask for the kind of key that was pinned, so a server with several host keys
            // presents the one we know.
            let algs: Vec<_> = target.host_keys.0.iter().map(PublicKey::algorithm).collect();
            config.preferred.key = Cow::Owned(algs);
        }
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker { pinned: target.host_keys.clone(), seen: Arc::clone(&seen) };
        let handshake = client::connect_stream(Arc::new(config), stream, checker);
        let mut handle = match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => return Err(timeout()),
            Ok(Ok(h)) => h,
            Ok(Err(russh::Error::UnknownKey)) => {
                let got = seen.lock().ok().and_then(|s| s.as_ref().map(crate::fingerprint)).unwrap_or_default();
                return Err(SshError::HostKeyChanged { addr, expected: target.host_keys.fingerprints(), got });
            }
            Ok(Err(e)) => return Err(SshError::Session { addr, reason: describe(&e) }),
        };
        let host_key = seen.lock().ok().and_then(|s| s.clone()).ok_or_else(|| SshError::Session {
            addr: addr.clone(),
            reason: "the server presented no host key".into(),
        })?;
        tokio::time::timeout_at(deadline, authenticate(&mut handle, target, &addr)).await.map_err(|_| timeout())??;
        Ok(Session { handle, addr, host_key })
    }

    /// The key the server presented.
    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// Whether the connection has ended (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `command` (through the login shell), feeding it `input` on stdin, passing its
    /// output to `sink` as it arrives, until it ends or `cancel` fires.
    ///
    /// # Errors
    /// [`SshError::NoChannel`] if the command could not be started (nothing ran),
    /// [`SshError::Session`] if the channel fails later; [`SshError::Cancelled`] if cancelled
    /// (the channel is closed; killing what the command started is the caller's job).
    pub async fn exec(
        &self,
        command: &str,
        input: Option<&[u8]>,
        cancel: &CancellationToken,
        mut sink: impl FnMut(OutputStream, &str),
    ) -> Result<Exit, SshError> {
        let fail = |e: russh::Error| SshError::Session { addr: self.addr.clone(), reason: describe(&e) };
        // Until the exec request is sent, nothing has run: a distinct error, so that a
        // caller may try again on another connection.
        let no_channel = |e: russh::Error| SshError::NoChannel { addr: self.addr.clone(), reason: describe(&e) };
        let mut channel = self.handle.channel_open_session().await.map_err(no_channel)?;
        channel.exec(true, command).await.map_err(no_channel)?;
        if let Some(data) = input {
            channel.data_bytes(data.to_vec()).await.map_err(fail)?;
        }
        channel.eof().await.map_err(fail)?;
        let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
        let mut exit = Exit::Unknown;
        loop {
            tokio::select! {
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => sink(OutputStream::Stdout, &out.push(&data)),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => sink(OutputStream::Stderr, &err.push(&data)),
                    Some(ChannelMsg::ExitStatus { exit_status }) => exit = Exit::Code(exit_status),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => exit = Exit::Signal(format!("{signal_name:?}")),
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
                () = cancel.cancelled() => {
                    let _ = channel.close().await;
                    return Err(SshError::Cancelled);
                }
            }
        }
        for (stream, rest) in [(OutputStream::Stdout, out.finish()), (OutputStream::Stderr, err.finish())] {
            if !rest.is_empty() {
                sink(stream, &rest);
            }
        }
        Ok(exit)
    }

    /// Runs `command` and collects its output.
    ///
    /// # Errors
    /// As [`Session::exec`].
    pub async fn run(&self, command: &str, input: Option<&[u8]>) -> Result<(Exit, String, String), SshError> {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let never = CancellationToken::new();
        let exit = self
            .exec(command, input, &never, |s, text| match s {
                OutputStream::Stdout => stdout.push_str(text),
                OutputStream::Stderr => stderr.push_str(text),
            })
            .await?;
        Ok((exit, stdout, stderr))
    }

    /// Says goodbye to the server.
    pub async fn close(&self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
}

async fn authenticate(handle: &mut Handle<Checker>, target: &Target, addr: &str) -> Result<(), SshError> {
    let fail = |e: russh::Error| SshError::Session { addr: addr.to_owned(), reason: describe(&e) };
    let (result, method) = match &target.auth {
        Auth::Password(pw) => {
            (handle.authenticate_password(&target.user, pw).await.map_err(fail)?, "password".to_owned())
        }
        Auth::KeyFile(path, passphrase) => {
            let key = russh::keys::load_secret_key(path, passphrase.as_deref())
                .map_err(|e| SshError::Key { path: path.display().to_string(), reason: e.to_string() })?;
            let result = login_with_key(handle, &target.user, key).await.map_err(fail)?;
            (result, format!("key {}", path.display()))
        }
        Auth::Key(text, passphrase) => {
            let key = russh::keys::decode_secret_key(text, passphrase.as_deref())
                .map_err(|e| SshError::Key { path: "ssh-auth.privatekey".into(), reason: e.to_string() })?;
            (login_with_key(handle, &target.user, key).await.map_err(fail)?, "key in ssh-auth.privatekey".to_owned())
        }
    };
    match result {
        client::AuthResult::Success => Ok(()),
        client::AuthResult::Failure { remaining_methods, .. } => {
            let names: Vec<&str> = remaining_methods.iter().map(<&'static str>::from).collect();
            let accepts = if names.is_empty() { String::new() } else { format!(" (it accepts: {})", names.join(", ")) };
            Err(SshError::AuthFailed { user: target.user.clone(), addr: addr.to_owned(), method, accepts })
        }
    }
}

async fn login_with_key(
    handle: &mut Handle<Checker>,
    user: &str,
    key: russh::keys::PrivateKey,
) -> Result<client::AuthResult, russh::Error> {
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await
}

fn connect_error(addr: &str, e: &std::io::Error) -> SshError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => SshError::Refused { addr: addr.to_owned() },
        _ => SshError::Unreachable { addr: addr.to_owned(), reason: e.to_string() },
    }
}

fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::HUP | russh::Error::Disconnect => "the server closed the connection".into(),
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Turns a byte stream into text without splitting a UTF-8 character across chunks.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end: keep it for the next chunk.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_characters_split_across_chunks_stay_whole() {
        let bytes = "héllo wörld".as_bytes();
        let mut c = Utf8Carry::default();
        let mut out = String::new();
        for chunk in bytes.chunks(1) {
            out.push_str(&c.push(chunk));
        }
        out.push_str(&c.finish());
        assert_eq!(out, "héllo wörld");
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"bad \xff byte"), "bad \u{fffd} byte");
    }

    #[test]
    fn exit_statuses() {
        assert!(Exit::Code(0).success());
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Signal("KILL".into()).status(), 1);
        assert_eq!(Exit::Code(2).to_string(), "exited with code 2");
    }
}
