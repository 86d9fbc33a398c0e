//! Machines as network namespaces (root only): each gets its own address on a bridge, so
//! machines are separate hosts on a network that this host routes to.
//!
//! Layout: a bridge (default `loombr0`, 10.213.0.1/16) on the host; per machine a
//! namespace `loom-<id>` whose `eth0` is one end of a veth pair, the other end on the
//! bridge; the machine's sshd listens on port 22 inside.

use std::net::Ipv4Addr;

use tokio::process::Command;

/// The network: a bridge and a /16 whose .0.1 is the bridge's address.
#[derive(Debug, Clone)]
pub struct Net {
    pub bridge: String,
    pub base: Ipv4Addr,
}

impl Net {
    fn gateway(&self) -> Ipv4Addr {
        let [a, b, _, _] = self.base.octets();
        Ipv4Addr::new(a, b, 0, 1)
    }

    /// Addresses handed out: .0.2 to .255.254.
    pub fn address(&self, n: u32) -> Option<Ipv4Addr> {
        let [a, b, _, _] = self.base.octets();
        let host = n.checked_add(2)?;
        (host < 0xFFFF).then(|| Ipv4Addr::new(a, b, (host >> 8) as u8, (host & 0xFF) as u8))
    }

    /// Creates the bridge if it is missing.
    pub async fn ensure_bridge(&self) -> Result<(), String> {
        if ip(&["link", "show", &self.bridge]).await.is_ok() {
            return Ok(());
        }
        ip(&["link", "add", &self.bridge, "type", "bridge"]).await?;
        ip(&["addr", "add", &format!("{}/16", self.gateway()), "dev", &self.bridge]).await?;
        ip(&["link", "set", &self.bridge, "up"]).await
    }

    /// Creates namespace `ns` with `eth0` at `addr`, wired to the bridge through `veth`.
    pub async fn create(&self, ns: &str, veth: &str, addr: Ipv4Addr) -> Result<(), String> {
        self.ensure_bridge().await?;
        ip(&["netns", "add", ns]).await?;
        let peer = format!("{veth}p");
        let wired = async {
            ip(&["link", "add", veth, "type", "veth", "peer", "name", &peer]).await?;
            ip(&["link", "set", &peer, "netns", ns]).await?;
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"]).await?;
            ip(&["link", "set", veth, "master", &self.bridge, "up"]).await?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]).await?;
            ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
            ip(&["-n", ns, "route", "add", "default", "via", &self.gateway().to_string()]).await
        };
        if let Err(e) = wired.await {
            destroy(ns, veth).await;
            return Err(e);
        }
        Ok(())
    }
}

/// Pids of every process in namespace `ns`.
pub async fn pids(ns: &str) -> Vec<i32> {
    match Command::new("ip").args(["netns", "pids", ns]).output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes the namespace and the host end of its veth pair (deleting one end deletes both).
pub async fn destroy(ns: &str, veth: &str) {
    let _ = ip(&["link", "del", veth]).await;
    let _ = ip(&["netns", "del", ns]).await;
}

/// Removes the bridge.
pub async fn remove_bridge(bridge: &str) {
    let _ = ip(&["link", "del", bridge]).await;
}

/// Runs `ip ARGS`; the error carries ip's own message.
async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_network_and_the_gateway() {
        let net = Net { bridge: "b".into(), base: Ipv4Addr::new(10, 213, 0, 0) };
        assert_eq!(net.address(0), Some(Ipv4Addr::new(10, 213, 0, 2)));
        assert_eq!(net.address(254), Some(Ipv4Addr::new(10, 213, 1, 0)));
        assert_eq!(net.address(0xFFFC), Some(Ipv4Addr::new(10, 213, 255, 254)));
        assert_eq!(net.address(0xFFFD), None);
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 213, 0, 1));
    }
}
