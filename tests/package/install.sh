#!/usr/bin/env bash
# The Debian package, checked as an admin would meet it. Usage:
#
#   tests/package/install.sh DEB            the package's layout and metadata, unpacked
#                                           with dpkg-deb (any user, changes nothing)
#   tests/package/install.sh --install DEB  also, as root, on a machine you can throw away:
#                                           dpkg -i; the user, data folder, units, man pages
#                                           and completions; `serve` started from the
#                                           installed files as the unit's user, answering
#                                           /healthz and listing the bundled plugins as
#                                           runnable; stopped with SIGTERM; dpkg -r, dpkg -P
#
# Exits 1 at the first failed check, saying which. .ci/run runs it with --install.
set -euo pipefail

install=false
if [ "${1:-}" = --install ]; then install=true; shift; fi
deb="${1:?usage: tests/package/install.sh [--install] DEB}"
[ -f "$deb" ] || { echo "install.sh: $deb: no such file" >&2; exit 1; }

fail() { echo "install.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "install.sh: ok: $*"; }

work="$(mktemp -d)"
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then kill -KILL "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

plugins=/usr/lib/loom-provisioner/plugins
expected_files=(
  usr/bin/loom-provisioner
  "$plugins"/automators/shell/shell.json "$plugins"/automators/shell/loom-plugin-shell
  "$plugins"/providers/local/local.json "$plugins"/providers/local/loom-plugin-local
  "$plugins"/providers/fixed/fixed.json "$plugins"/providers/fixed/loom-plugin-fixed
  "$plugins"/providers/ec2/ec2.json "$plugins"/providers/ec2/loom-plugin-ec2
  usr/share/loom-provisioner/loom-ruby-host usr/share/loom-provisioner/lib/loom_ruby_host/server.rb
  lib/systemd/system/loom-provisioner.service lib/systemd/system/loom-provisioner.socket
  usr/lib/sysusers.d/loom-provisioner.conf usr/lib/tmpfiles.d/loom-provisioner.conf
  etc/loom-provisioner/config.toml
  usr/share/man/man1/loom-provisioner.1.gz usr/share/man/man1/loom-provisioner-serve.1.gz
  usr/share/man/man1/loom-provisioner-cluster-up.1.gz
  usr/share/bash-completion/completions/loom-provisioner
  usr/share/zsh/vendor-completions/_loom-provisioner
  usr/share/fish/vendor_completions.d/loom-provisioner.fish
  usr/share/doc/loom-provisioner/README.md
)
executables=(usr/bin/loom-provisioner "$plugins"/automators/shell/loom-plugin-shell
  "$plugins"/providers/{local/loom-plugin-local,fixed/loom-plugin-fixed,ec2/loom-plugin-ec2}
  usr/share/loom-provisioner/loom-ruby-host)

# --- The package as built: metadata and layout.
[ "$(dpkg-deb -f "$deb" Package)" = loom-provisioner ] || fail "Package is not loom-provisioner"
dpkg-deb -f "$deb" Depends | grep -q libc6 || fail "Depends names no libc6: $(dpkg-deb -f "$deb" Depends)"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/loom-provisioner/config.toml || fail "config.toml is not a conffile"
for s in postinst prerm postrm; do
  dpkg-deb -I "$deb" "$s" >/dev/null || fail "no $s maintainer script"
done
# Every file and folder root's and writable by root only: the daemon's trust checks refuse
# plugins others can write.
listing="$(dpkg-deb -c "$deb")"
bad="$(awk '($2 != "root/root" && $2 != "0/0") || substr($1, 6, 1) == "w" || substr($1, 9, 1) == "w"' <<<"$listing")"
[ -z "$bad" ] || fail "entries not root/root or writable by group or others:\n$bad"
dpkg-deb -x "$deb" "$work/root"
for f in "${expected_files[@]}"; do
  [ -f "$work/root/${f#/}" ] || fail "$f is not in the package"
done
for f in "${executables[@]}"; do
  [ -x "$work/root/${f#/}" ] || fail "$f is not executable"
done
grep -q '^ExecStart=/usr/bin/loom-provisioner serve --config /etc/loom-provisioner/config.toml$' \
  "$work/root/lib/systemd/system/loom-provisioner.service" || fail "the unit does not start /usr/bin/loom-provisioner"
grep -qx 'plugin_dirs = \["/usr/lib/loom-provisioner/plugins"\]' "$work/root/etc/loom-provisioner/config.toml" \
  || fail "the configuration's plugin_dirs is not the bundled plugins' tree"
# The man page and completion name the subcommands.
zcat "$work/root/usr/share/man/man1/loom-provisioner.1.gz" | grep -q 'loom\\-provisioner\\-serve' \
  || fail "the man page does not mention serve"
grep -q cluster "$work/root/usr/share/bash-completion/completions/loom-provisioner" \
  || fail "the bash completion does not mention cluster"
# The unpacked tree, as the daemon would read it: every bundled plugin registered (not
# runnable from here: the trust checks refuse a tree under /tmp, as they should).
"$work/root/usr/bin/loom-provisioner" plugins --plugins-dir "$work/root$plugins" --json >"$work/plugins.json" \
  2>"$work/plugins.log" || fail "loom-provisioner plugins failed on the unpacked tree: $(cat "$work/plugins.log")"
for p in shell local fixed ec2; do
  grep -q "\"name\": *\"$p\"" "$work/plugins.json" || fail "plugin $p is not registered from the unpacked tree: $(cat "$work/plugins.json")"
done
ok "layout and metadata of $deb"

$install || exit 0

# --- Installed, on this machine (root; a throwaway machine: it adds a system user).
[ "$(id -u)" = 0 ] || fail "--install needs root"
dpkg -s loom-provisioner >/dev/null 2>&1 && fail "loom-provisioner is installed already; remove it first (dpkg -P loom-provisioner)"
# The user the package adds stays after a purge, as Debian's policy has it; when this test
# made it, it takes it away again, so the machine is as it found it (.ci/run runs README's
# walk-through, whose `useradd` wants a machine without it).
had_user=false
getent passwd loom-provisioner >/dev/null && had_user=true
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" || fail "dpkg -i $deb"
for f in "${expected_files[@]}"; do
  [ -e "/${f#/}" ] || fail "/$f is not installed"
done
getent passwd loom-provisioner >/dev/null || fail "the user loom-provisioner was not created"
read -r owner mode < <(stat -c '%U %a' /var/lib/loom-provisioner) || fail "/var/lib/loom-provisioner was not created"
[ "$owner $mode" = "loom-provisioner 700" ] || fail "/var/lib/loom-provisioner is $owner $mode, not loom-provisioner 700"
if command -v man >/dev/null; then
  man -w loom-provisioner-serve >/dev/null || fail "man -w loom-provisioner-serve finds no page"
fi
if command -v systemd-analyze >/dev/null; then
  # Also what the unit's Documentation= names (it looks the man pages up when man is here).
  systemd-analyze verify /lib/systemd/system/loom-provisioner.service /lib/systemd/system/loom-provisioner.socket \
    || fail "systemd-analyze verify of the installed units"
fi
bash -c 'source /usr/share/bash-completion/completions/loom-provisioner && complete -p loom-provisioner' >/dev/null \
  || fail "the bash completion does not register"
ok "installed: files, user, data folder, man pages, completion, units verified"

# `serve` from the installed files, as the unit runs it (its user; the packaged
# configuration, on a free port instead of 55056, which something else may hold).
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
confdir="$work/etc"
install -d -m 0755 "$confdir"
chmod 0755 "$work"
sed "s|^listen = .*|listen = \"127.0.0.1:$port\"|" /etc/loom-provisioner/config.toml >"$confdir/config.toml"
chmod 0644 "$confdir/config.toml"
# setpriv execs the daemon (runuser would stay its parent and take the SIGTERM).
env -u NOTIFY_SOCKET HOME=/var/lib/loom-provisioner \
  setpriv --reuid=loom-provisioner --regid=loom-provisioner --init-groups -- \
  /usr/bin/loom-provisioner serve --config "$confdir/config.toml" 2>"$work/serve.log" &
daemon_pid=$!
get() { # get PATH: the body of a 200 answer on stdout; fails on anything else
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "http://127.0.0.1:$port$1"
}
deadline=$((SECONDS + 60))
until get /healthz >/dev/null 2>&1; do
  kill -0 "$daemon_pid" 2>/dev/null || fail "serve exited; its log:\n$(cat "$work/serve.log")"
  ((SECONDS < deadline)) || fail "/healthz did not answer 200 within 60 s; log:\n$(cat "$work/serve.log")"
  sleep 0.2
done
get /v1/plugins >"$work/v1-plugins.json" || fail "GET /v1/plugins"
python3 - "$work/v1-plugins.json" <<'PY' || fail "GET /v1/plugins: $(cat "$work/v1-plugins.json")"
import json, sys
plugins = {p["name"]: p for p in json.load(open(sys.argv[1]))["plugins"]}
missing = {"shell", "local", "fixed", "ec2"} - set(plugins)
assert not missing, f"not listed: {missing}"
# Runnable from the installed tree (the trust checks passed): every one but local, which
# asks for root while this daemon is not root.
for name in ("shell", "fixed", "ec2"):
    assert plugins[name]["runnable"] is True, plugins[name]
PY
kill -TERM "$daemon_pid"
wait "$daemon_pid" && code=0 || code=$?
daemon_pid=
[ "$code" = 0 ] || fail "serve exited $code after SIGTERM; log:\n$(cat "$work/serve.log")"
[ "$(stat -c %U /var/lib/loom-provisioner/journal.sqlite3)" = loom-provisioner ] || fail "no journal written by loom-provisioner"
ok "serve from the installed files: /healthz 200, the bundled plugins listed, stopped cleanly"

# --- Removed, then purged.
dpkg -r loom-provisioner || fail "dpkg -r"
[ ! -e /usr/bin/loom-provisioner ] && [ ! -e "$plugins" ] || fail "files left after dpkg -r"
[ -f /etc/loom-provisioner/config.toml ] || fail "the conffile was removed by dpkg -r (only purge removes it)"
dpkg -P loom-provisioner || fail "dpkg -P"
[ ! -e /etc/loom-provisioner/config.toml ] && [ ! -e /var/lib/loom-provisioner ] || fail "config or data left after dpkg -P"
$had_user || userdel loom-provisioner || fail "userdel loom-provisioner"
ok "removed and purged"
