//! The daemon's HTTP handling: any bytes a client sends on a connection, through hyper,
//! the connection limits and the API's routing, to a real daemon (journal included)
//! without plugins, with a bearer token configured.
//!
//! Input: the bytes of a connection, sent whole, then the client's side is shut. Checked:
//! - nothing panics, and the connection ends (a hang is caught by the fuzzer's timeout);
//! - whatever comes back is HTTP/1.x responses, each with a status the API gives;
//! - a response body that is an error is JSON with an `error` member;
//! - the token is never in an answer unless the request held it (paths are echoed in
//!   "no such endpoint" errors).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loom_supervisor::inputs::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "fuzz-token-0123456789abcdef";

/// Statuses the API answers with (hyper adds 400, 408, 413, 414 and 431 for malformed
/// requests).
const STATUSES: [u16; 14] = [200, 202, 400, 401, 404, 405, 408, 409, 413, 414, 431, 500, 501, 503];

struct Rig {
    runtime: tokio::runtime::Runtime,
    daemon: Arc<Daemon>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let dir = loom_fuzz::scratch_dir("http_request");
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).expect("the plugins folder");
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("the token file");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let text = "plugin_dirs = [\"plugins\"]\ndata_dir = \"data\"\ntoken_file = \"token\"\n\
                    max_body_bytes = 65536\nmax_pending_task_bytes = 1048576\n\
                    [http]\nheader_read_timeout_secs = 2\nbody_read_timeout_secs = 2\nidle_timeout_secs = 2\n";
        let config = loom_supervisor::inputs::config::parse(&dir.join("config.toml"), text).expect("the configuration");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let daemon = runtime
            .block_on(async { Daemon::start(config, loom_protocol::LogLevel::Error) })
            .expect("the daemon");
        Rig { runtime, daemon }
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let answer = rig.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(loom_supervisor::inputs::serve_stream(server, Arc::clone(&rig.daemon)));
        // The daemon may close first (a malformed request): then the rest is not sent.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut answer)).await;
        // An event stream (`GET /v1/events`) stays open until the daemon drains: closing
        // the client's side ends it.
        let streaming = String::from_utf8_lossy(&answer).contains("text/event-stream");
        assert!(read.is_ok() || streaming, "the connection did not end");
        drop(client);
        assert!(serving.await.is_ok(), "serving the connection panicked");
        answer
    });
    check(data, &answer);
});

fn check(request: &[u8], answer: &[u8]) {
    if answer.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(answer);
    // hyper answers in the request's version: HTTP/1.0 or HTTP/1.1.
    assert!(text.starts_with("HTTP/1."), "not an HTTP response: {:?}", &text[..text.len().min(200)]);
    for response in text.split("HTTP/1.").skip(1) {
        // "1 200 OK...": a status line; anything else is "HTTP/1." inside a body (an echoed path).
        let status = response.get(1..6).filter(|s| s.starts_with(' ') && s.ends_with(' '));
        let Some(status) = status.and_then(|s| s.trim().parse::<u16>().ok()) else { continue };
        assert!(STATUSES.contains(&status), "status {status}: {:?}", &response[..response.len().min(200)]);
    }
    if !contains(request, TOKEN.as_bytes()) {
        assert!(!contains(answer, TOKEN.as_bytes()), "the token in an answer");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
