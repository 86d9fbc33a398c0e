//! A local EC2 API: `moto_server` (PyPI `moto[server]`) on a free loopback port.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::net::free_port;

/// A `moto_server` on a free loopback port, for the EC2 API. Stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT/`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` to check
    /// credentials) and waits until it says it is serving.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server on PATH (pip install 'moto[server]')");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Running on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("moto_server did not start within 60 s");
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}/") }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
