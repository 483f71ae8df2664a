//! `~/.config/clacks/shell.toml`: where the shell connects by default, where scripts
//! import modules from, and the limits scripts run under.
//!
//! ```toml
//! url = "amqp://broker.example.net/%2f"
//! domain = "org.clacks"
//! user = "ada"
//! agent_users = ["clacks-agent"]
//! timeout_secs = 30
//! scripts_path = ["~/clacks-scripts"]
//! [limits]
//! max_operations = 500000000
//! ```

use std::path::PathBuf;

use clacks_scripting::Limits;
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
    /// PEM file of the CA that signed the broker's certificate (`amqps://`).
    pub(crate) ca_file: Option<PathBuf>,
    /// Broker users of the domain's agents, whose replies are believed (`amqp[s]://`).
    pub(crate) agent_users: Vec<String>,
    /// Folders `import "name"` looks in (after the running script's own folder).
    pub(crate) scripts_path: Vec<PathBuf>,
    /// Script resource limits.
    pub(crate) limits: LimitsSection,
}

/// `[limits]`: what one script run may use.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) max_operations: u64,
    pub(crate) max_call_levels: usize,
    pub(crate) max_string_size: usize,
    pub(crate) max_array_size: usize,
    pub(crate) max_map_size: usize,
}

impl Default for LimitsSection {
    fn default() -> LimitsSection {
        // Admin scripts walk whole directories; allow far more work than an agent plugin.
        let base = Limits::default();
        LimitsSection {
            max_operations: 1_000_000_000,
            max_call_levels: base.max_call_levels,
            max_string_size: base.max_string_size,
            max_array_size: 10_000_000,
            max_map_size: 10_000_000,
        }
    }
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

    /// The limits scripts run under.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_operations: self.limits.max_operations,
            max_call_levels: self.limits.max_call_levels,
            max_string_size: self.limits.max_string_size,
            max_array_size: self.limits.max_array_size,
            max_map_size: self.limits.max_map_size,
        }
    }

    /// Module folders, `~` expanded; the user's `~/.config/clacks/scripts` last.
    pub(crate) fn script_paths(&self) -> Vec<PathBuf> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut paths: Vec<PathBuf> = self
            .scripts_path
            .iter()
            .map(|p| match (p.strip_prefix("~"), &home) {
                (Ok(rest), Some(home)) => home.join(rest),
                _ => p.clone(),
            })
            .collect();
        if let Some(dirs) = directories::ProjectDirs::from("org", "clacks", "clacks") {
            paths.push(dirs.config_dir().join("scripts"));
        }
        paths
    }
}

fn path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CLACKS_SHELL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("org", "clacks", "clacks").map(|d| d.config_dir().join("shell.toml"))
}
