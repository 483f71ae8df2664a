//! `clacks`: the administrator's shell for a Clacks domain (see the `clacks_shell`
//! library for everything it does).

fn main() -> std::process::ExitCode {
    clacks_shell::run_cli()
}
