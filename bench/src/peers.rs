//! The peers from `../shared/peers` (see its README): the same echo round trip over a
//! child's stdio, built on the JSON-RPC and MCP libraries people use for it, run by this
//! harness in the same rounds as the supervisor so that the ratios compare like with
//! like. Their own `run.sh` builds them into `$PEERS_BUILD` (default
//! `/tmp/loom-peers-build`); the harness runs it once when something is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One peer program and the line of its output that carries the sequential figure.
pub struct Peer {
    /// The figure's name in BENCHMARKS.md.
    pub name: &'static str,
    /// The program and its arguments (`{B}`: the rpc build, `{R}`: the rmcp build,
    /// `{build}`: the build folder).
    argv: &'static [&'static str],
    /// Working directory, relative to the build folder (or `{peers}` for the source).
    cwd: Option<&'static str>,
    /// Calls per run (`N`).
    calls: u32,
    /// A piece of the line to read.
    marker: &'static str,
}

/// The peers, in the order of the report.
pub const PEERS: &[Peer] = &[
    Peer {
        name: "peer: tokio pipe ping-pong, no JSON",
        argv: &["{B}/floor_tokio", "tokiochild"],
        cwd: None,
        calls: 20_000,
        marker: "tokio pipe ping-pong",
    },
    Peer {
        name: "peer: hand-rolled JSON-RPC client and child",
        argv: &["{B}/parent_raw", "{B}/child_raw"],
        cwd: None,
        calls: 10_000,
        marker: "hand-rolled sequential",
    },
    Peer {
        name: "peer: jsonrpsee",
        argv: &["{B}/parent_jr", "{B}/child_jr", "intercept"],
        cwd: None,
        calls: 10_000,
        marker: "jsonrpsee sequential",
    },
    Peer {
        name: RMCP,
        argv: &["{R}/rmcp_client", "{R}/rmcp_server"],
        cwd: None,
        calls: 10_000,
        marker: "echo sequential",
    },
    Peer {
        name: "peer: TypeScript MCP SDK",
        argv: &["node", "mcp_client.mjs"],
        cwd: Some("node"),
        calls: 5_000,
        marker: "tools/call echo sequential",
    },
    Peer {
        name: VSCODE,
        argv: &["node", "vj_parent.js"],
        cwd: Some("node"),
        calls: 5_000,
        marker: "vscode-jsonrpc sequential",
    },
    Peer {
        name: "peer: Python MCP SDK",
        argv: &["{build}/pyenv/bin/python", "client.py"],
        cwd: Some("{peers}/py"),
        calls: 500,
        marker: "python mcp tools/call echo sequential",
    },
];

/// The rmcp figure's name (a goal refers to it).
pub const RMCP: &str = "peer: rmcp (Rust MCP SDK)";
/// The vscode-jsonrpc figure's name (a goal refers to it).
pub const VSCODE: &str = "peer: vscode-jsonrpc";

/// Where the peers' sources and build are.
pub struct Peers {
    source: PathBuf,
    build: PathBuf,
}

impl Peers {
    /// The peers in `source`, built (by their `run.sh`, once) if anything is missing.
    ///
    /// # Errors
    /// When `source` has no `run.sh`, or the build fails.
    pub fn prepare(source: &Path) -> Result<Peers, String> {
        let run = source.join("run.sh");
        if !run.is_file() {
            return Err(format!("no peers at {} (no run.sh)", source.display()));
        }
        let build =
            std::env::var_os("PEERS_BUILD").map_or_else(|| PathBuf::from("/tmp/loom-peers-build"), PathBuf::from);
        let peers = Peers { source: source.to_path_buf(), build };
        let ready = [
            "rpc/target/release/parent_raw",
            "rmcpb/target/release/rmcp_server",
            "node/node_modules",
            "pyenv/bin/python",
        ]
        .iter()
        .all(|p| peers.build.join(p).exists());
        if !ready {
            eprintln!("loom-bench: building the peers with {} (once; needs crates.io, npm and PyPI)", run.display());
            let status = Command::new("bash")
                .arg(&run)
                .env("PEERS_BUILD", &peers.build)
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", run.display()))?;
            if !status.success() {
                return Err(format!("{} failed ({status})", run.display()));
            }
        }
        Ok(peers)
    }

    fn expand(&self, text: &str) -> String {
        let rpc = self.build.join("rpc/target/release");
        let rmcp = self.build.join("rmcpb/target/release");
        text.replace("{B}", &rpc.to_string_lossy())
            .replace("{R}", &rmcp.to_string_lossy())
            .replace("{build}", &self.build.to_string_lossy())
            .replace("{peers}", &self.source.to_string_lossy())
    }

    /// Runs `peer` once; microseconds per sequential call.
    ///
    /// # Errors
    /// When it cannot be run or does not print its figure.
    pub fn run(&self, peer: &Peer) -> Result<f64, String> {
        let argv: Vec<String> = peer.argv.iter().map(|a| self.expand(a)).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("N", peer.calls.to_string()).env("PLUGIN_IO", "pipe");
        match peer.cwd {
            Some(dir) if dir.starts_with('{') => cmd.current_dir(self.expand(dir)),
            Some(dir) => cmd.current_dir(self.build.join(dir)),
            None => &mut cmd,
        };
        let out = cmd.output().map_err(|e| format!("{}: cannot run {}: {e}", peer.name, argv[0]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        text.lines()
            .filter(|l| l.contains(peer.marker))
            .find_map(per_call)
            .ok_or_else(|| format!("{}: no \"{}\" figure in its output ({})", peer.name, peer.marker, out.status))
    }
}

/// `... => 4.3 us/call ...` or `... => 2.98 us/rt ...`: the number before `us/`.
fn per_call(line: &str) -> Option<f64> {
    let after = line.split("=> ").nth(1)?;
    let number = after.split(" us/").next()?;
    number.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_figure_of_each_output_style() {
        assert_eq!(
            super::per_call("hand-rolled sequential: 10000 calls 0.043s => 4.3 us/call, 232508 calls/s"),
            Some(4.3)
        );
        assert_eq!(
            super::per_call("tokio pipe ping-pong (...): 20000 rt 0.060s => 2.98 us/rt, 335147 rt/s"),
            Some(2.98)
        );
        assert_eq!(super::per_call("no figure here"), None);
    }
}
