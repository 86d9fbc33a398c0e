#!/usr/bin/env bash
# Builds the Debian package, target/debian/loom-provisioner_<version>-1_<arch>.deb, with
# cargo-deb (`cargo install cargo-deb --version 3.8.0 --locked`). Builds the release
# binaries (nothing to do after `cargo build --release` of the same packages), makes the
# files generated from them into target/deb-generated, and packs what
# supervisor/Cargo.toml's [package.metadata.deb] lists. Extra arguments go to cargo-deb
# (e.g. --output DIR). Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/../.."
umask 022

command -v cargo-deb >/dev/null || {
  echo "dist/deb/build.sh: cargo-deb is required: cargo install cargo-deb --version 3.8.0 --locked" >&2
  exit 1
}
# The whole workspace, as bench/run.sh builds it: the same features, nothing built twice.
cargo build --release --quiet --workspace --bins

gen=target/deb-generated
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
bin=target/release/loom-provisioner
"$bin" man --out "$gen/man" >/dev/null
gzip -9n "$gen"/man/*.1
"$bin" completions bash >"$gen/completions/loom-provisioner"
"$bin" completions zsh >"$gen/completions/_loom-provisioner"
"$bin" completions fish >"$gen/completions/loom-provisioner.fish"

# The unit as packaged: the binary in /usr/bin (dist/'s names /usr/local/bin, where a
# build by hand goes).
sed 's|^ExecStart=/usr/local/bin/loom-provisioner |ExecStart=/usr/bin/loom-provisioner |' \
  dist/loom-provisioner.service >"$gen/loom-provisioner.service"
grep -q '^ExecStart=/usr/bin/loom-provisioner serve ' "$gen/loom-provisioner.service" \
  || { echo "dist/deb/build.sh: no ExecStart=/usr/local/bin/loom-provisioner line in dist/loom-provisioner.service" >&2; exit 1; }

# The configuration as packaged: the bundled plugins' tree.
sed 's|^plugin_dirs = .*|# The Debian package'"'"'s bundled plugins. For your own, make a plugins tree like it\
# (/etc/loom-provisioner/plugins/{providers,automators}/<name>/<name>.json) and list it\
# first: a plugin name found twice keeps the first.\
plugin_dirs = ["/usr/lib/loom-provisioner/plugins"]|' dist/config.toml >"$gen/config.toml"
grep -q '^plugin_dirs = \["/usr/lib/loom-provisioner/plugins"\]$' "$gen/config.toml" \
  || { echo "dist/deb/build.sh: no plugin_dirs line in dist/config.toml" >&2; exit 1; }

# Stripped: the binaries are a quarter of their size without the line tables.
cargo deb -p loom-supervisor --no-build --strip --quiet "$@" | tail -n 1
