//! `clacks join` and `clacks leave`: make this machine a client of the domain, or stop
//! being one.
//!
//! Joining logs in as an administrator (asked for on a terminal, or given for
//! provisioning with `-u`/`--password`/`CLACKS_PASSWORD`), calls `joinClient` with this
//! machine's id, and writes the machine identity the agent hands out into
//! `/etc/clacks/client.toml` (mode 0600) — so only root may join. From then on
//! `clacks-agent --role client` logs in as the machine itself. A machine that joined
//! already is refused before anything is asked of the domain.

use std::path::{Path, PathBuf};

use clacks_client::ClientConfig;
use clacks_client::config::DEFAULT_CLIENT_CONFIG;
use clacks_core::client::ClientError;
use clacks_core::rpc::Params;
use serde_json::{Map, Value, json};

use crate::args::{EXIT_CONNECTION, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::connect::{Target, connect};

/// What `clacks join` was told.
pub(crate) struct JoinRequest {
    pub(crate) config: Option<PathBuf>,
    pub(crate) device_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) device_type: Option<String>,
}

fn fail(code: u8, message: impl std::fmt::Display) -> u8 {
    eprintln!("clacks: {message}");
    code
}

fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The config path, refusing the system one to anyone but root.
fn config_path(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(path) => Ok(path.clone()),
        None if effective_uid() == Some(0) => Ok(PathBuf::from(DEFAULT_CLIENT_CONFIG)),
        None => Err(format!("joining writes {DEFAULT_CLIENT_CONFIG}: run as root (or give --config PATH)")),
    }
}

/// This machine's id: the firmware's (DMI) UUID, else systemd's machine id.
fn machine_id() -> Option<String> {
    ["/sys/class/dmi/id/product_uuid", "/etc/machine-id"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_lowercase())
        .find(|id| !id.is_empty())
}

fn report(error: &ClientError) -> u8 {
    match error {
        ClientError::Rpc(e) => fail(EXIT_FAILED, e),
        other => fail(EXIT_CONNECTION, other),
    }
}

pub(crate) fn join(request: JoinRequest, target: &Target, handle: &tokio::runtime::Handle) -> u8 {
    let path = match config_path(request.config.as_ref()) {
        Ok(path) => path,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if path.exists() {
        let who =
            ClientConfig::load(&path).map(|c| format!(" domain {} as client {}", c.domain, c.id)).unwrap_or_default();
        return fail(
            EXIT_FAILED,
            format!("this machine has joined{who} already ({}); run `clacks leave` first", path.display()),
        );
    }
    let Some(url) = target.url.clone().filter(|u| u.starts_with("amqp://") || u.starts_with("amqps://")) else {
        return fail(EXIT_USAGE, "joining needs the domain's broker: give --url amqp[s]://host/vhost (or CLACKS_URL)");
    };
    let Some(device_id) = request.device_id.clone().or_else(machine_id) else {
        return fail(
            EXIT_USAGE,
            "cannot read this machine's id (/sys/class/dmi/id/product_uuid, /etc/machine-id); give --device-id",
        );
    };
    let name = request.name.clone().unwrap_or_else(clacks_client::daemon::host_name);
    handle.block_on(async {
        let session = match connect(target).await {
            Ok(session) => session,
            Err(e) => return report(&e),
        };
        let mut args = Map::from_iter([("deviceUuid".to_owned(), json!(device_id)), ("name".to_owned(), json!(name))]);
        if let Some(kind) = &request.device_type {
            args.insert("info".into(), json!({"deviceType": kind}));
        }
        let joined = match session.client.call("joinClient", Params::Named(args)).await {
            Ok(value) => value,
            Err(e) => {
                session.close().await;
                return report(&e);
            }
        };
        let text = |key: &str| joined.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        // The address this shell reached first, then every other one the agent knows (the
        // cluster's nodes): the machine can reconnect to any of them.
        let mut addresses: Vec<String> = clacks_core::bus::amqp::broker_urls(&url)
            .into_iter()
            .chain(clacks_core::bus::amqp::broker_urls(&text("brokerUrls")))
            .map(clacks_core::bus::amqp::without_credentials)
            .collect();
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|a| seen.insert(a.clone()));
        let config = ClientConfig {
            domain: target.domain.to_string(),
            url: addresses.join(","),
            id: text("id"),
            secret: text("secret"),
            dn: text("dn"),
            ca_file: target.ca_file.clone(),
            agent_users: joined
                .get("agentUsers")
                .and_then(Value::as_array)
                .map(|users| users.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            ping_secs: 60,
            poll_spread_secs: clacks_client::daemon::DEFAULT_POLL_SPREAD.as_secs_f64(),
            shell_dir: None,
            facts_dir: None,
            dbus: None,
        };
        let code = match config.save(&path, false) {
            Ok(()) => {
                println!("joined {} as client {} ({})", config.domain, config.id, config.dn);
                println!("wrote {}; start `clacks-agent --role client` to bring this machine online", path.display());
                EXIT_OK
            }
            Err(e) => {
                // Without the file the identity is lost: take the registration back.
                let undo = Params::Named(Map::from_iter([("client".to_owned(), json!(config.id))]));
                let _ = session.client.call("leaveClient", undo).await;
                fail(EXIT_FAILED, format!("cannot save the machine identity: {e}; the registration was undone"))
            }
        };
        session.close().await;
        code
    })
}

pub(crate) fn leave(config: Option<&PathBuf>, force: bool, target: &Target, handle: &tokio::runtime::Handle) -> u8 {
    let path = match config_path(config) {
        Ok(path) => path,
        Err(e) => return fail(EXIT_USAGE, e.replace("joining", "leaving")),
    };
    let joined = match ClientConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_FAILED, format!("this machine has not joined a domain: {e}")),
    };
    let mut target = target.clone();
    if target.url.is_none() {
        target.url = Some(joined.url.clone());
    }
    let outcome = handle.block_on(async {
        let session = connect(&target).await?;
        let args = Params::Named(Map::from_iter([("client".to_owned(), json!(joined.id))]));
        let result = session.client.call("leaveClient", args).await;
        session.close().await;
        result
    });
    match outcome {
        Ok(_) => remove(&path, &joined),
        Err(ClientError::Rpc(e)) if e.symbolic() == clacks_core::rpc::ErrorCode::CLIENT_UNKNOWN => {
            eprintln!("clacks: the domain no longer knows client {}; removing the local identity", joined.id);
            remove(&path, &joined)
        }
        Err(e) if force => {
            eprintln!("clacks: the domain was not told ({e}); removing the local identity anyway (--force)");
            remove(&path, &joined)
        }
        Err(e) => report(&e),
    }
}

fn remove(path: &Path, joined: &ClientConfig) -> u8 {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("left {} (client {}); removed {}", joined.domain, joined.id, path.display());
            EXIT_OK
        }
        Err(e) => fail(EXIT_FAILED, format!("cannot remove {}: {e}", path.display())),
    }
}
