//! What every Clacks binary does before anything else: diagnostics to stderr through
//! `tracing`, the single TLS provider (aws-lc-rs) installed before any TLS is set up,
//! and a multi-threaded tokio runtime.

/// Prepares the process and returns the runtime to run `main` on.
pub fn prepare(log_filter: &str, fallback_filter: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter).unwrap_or_else(|_| fallback_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_on_stderr())
        .init();
    // Only fails when a provider is already installed, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Colours only for a person at a terminal: not into a file, a pipe or journald, and not
/// when `NO_COLOR` is set to anything (no-color.org).
fn colours_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
