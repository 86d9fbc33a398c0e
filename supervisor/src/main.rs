//! `loom-provisioner`: a thin shell over the library's [`loom_supervisor::cli`].

fn main() -> std::process::ExitCode {
    loom_supervisor::cli::main()
}
