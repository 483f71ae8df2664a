//! `~/.config/clacks/shell.toml`: where the shell connects by default.

use std::path::PathBuf;

use serde::Deserialize;

/// The shell's configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ShellConfig {
    /// `amqp[s]://…` or `http[s]://…/rpc`; none = embedded domain.
    pub(crate) url: Option<String>,
    /// Domain.
    pub(crate) domain: Option<String>,
    /// User name.
    pub(crate) user: Option<String>,
    /// Default call deadline in seconds.
    pub(crate) timeout_secs: Option<f64>,
    /// `.rhai` plugins for the embedded domain.
    pub(crate) plugins: Option<PathBuf>,
}

impl ShellConfig {
    /// Reads the file if it exists.
    pub(crate) fn load() -> Result<ShellConfig, String> {
        let Some(path) = path() else { return Ok(ShellConfig::default()) };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShellConfig::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

fn path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CLACKS_SHELL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("org", "clacks", "clacks").map(|d| d.config_dir().join("shell.toml"))
}
