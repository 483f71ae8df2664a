//! `clacks-agent`: runs an agent in the foreground until SIGTERM, SIGINT or a
//! `shutdown` call, then stops gracefully (NodeLeave, in-flight calls finish).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clacks_agent::auth::Authenticator;
use clacks_agent::config::{AgentConfig, secs};
use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::bus::local::LocalBus;
use clacks_core::domain::Domain;
use clap::{Parser, Subcommand};
use tracing::{error, info};

/// The Clacks agent: serves plugin commands to a domain over RabbitMQ and HTTP JSON-RPC.
#[derive(Parser, Debug)]
#[command(name = "clacks-agent", version)]
struct Cli {
    /// Configuration file (default /etc/clacks/agent.toml when it exists; with
    /// `--role client`, /etc/clacks/client.toml as `clacks join` wrote it).
    #[arg(long, env = "CLACKS_CONFIG")]
    config: Option<PathBuf>,
    /// `agent` serves the domain; `client` runs this machine as a joined client.
    #[arg(long, value_enum, default_value_t = Role::Agent)]
    role: Role,
    /// Broker URL, amqp[s]://user:password@host:port/vhost.
    #[arg(long, env = "CLACKS_AMQP_URL")]
    amqp: Option<String>,
    /// Serve JSON-RPC over HTTP on this address (host:port).
    #[arg(long, env = "CLACKS_HTTP_LISTEN")]
    http: Option<String>,
    /// Domain (reverse DNS), default org.clacks.
    #[arg(long, env = "CLACKS_DOMAIN")]
    domain: Option<String>,
    /// Node id, default the host name.
    #[arg(long, env = "CLACKS_NODE")]
    node: Option<String>,
    /// Folder of .rhai plugins.
    #[arg(long, env = "CLACKS_PLUGINS_DIR")]
    plugins: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace or a tracing directive).
    #[arg(long, env = "CLACKS_LOG", default_value = "info,lapin=off")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Agent,
    Client,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a password from stdin and print its argon2 hash for [http.users].
    HashPassword {
        /// Print a SCRAM-SHA-256 verifier instead: it allows SCRAM logins as well as plain ones.
        #[arg(long)]
        scram: bool,
        /// PBKDF2 rounds of the SCRAM verifier.
        #[arg(long, default_value_t = clacks_core::sasl::DEFAULT_ITERATIONS, requires = "scram")]
        iterations: u32,
    },
    /// Print the effective configuration as TOML, secrets left out, and exit.
    ShowConfig,
    /// Print the rabbitmqctl commands that give a broker user the permissions of its role
    /// in this domain (docs/security.md explains each set).
    BrokerPermissions {
        /// The broker user.
        user: String,
        /// user (shells, scripts, programs), agent, or client:<client id> (a joined machine).
        #[arg(long, default_value = "user")]
        role: clacks_core::bus::permissions::BrokerRole,
        /// The vhost (default: the one in the configured broker URL, else /).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Write a self-signed certificate and key for HTTPS (development only).
    MakeCert {
        /// Folder to write cert.pem and key.pem into.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// Host names and IP addresses the certificate is for.
        #[arg(default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        names: Vec<String>,
        /// How many days the certificate is valid (from yesterday, for clocks that differ).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match clacks_agent::process::prepare(&cli.log, "info") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clacks-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // No thread may be inside libxml2 while the process tears it down.
    clacks_core::events::schema::quiesce();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("clacks-agent: {e:#}");
            exit_code_of(&e)
        }
    }
}

fn effective_config(cli: &Cli) -> Result<AgentConfig> {
    let mut config = AgentConfig::load(cli.config.as_deref())?;
    if let Some(v) = &cli.amqp {
        config.amqp.url = Some(v.clone());
    }
    if let Some(v) = &cli.http {
        config.http.listen = Some(v.clone());
    }
    if let Some(v) = &cli.domain {
        config.domain = v.clone();
    }
    if let Some(v) = &cli.node {
        config.node = Some(v.clone());
    }
    if let Some(v) = &cli.plugins {
        config.plugins.dir = Some(v.clone());
    }
    config.validate()?;
    Ok(config)
}

async fn run(mut cli: Cli) -> Result<()> {
    match cli.command.take() {
        Some(Command::HashPassword { scram, iterations }) => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("the password is empty");
            }
            if scram {
                if iterations < clacks_core::sasl::DEFAULT_ITERATIONS {
                    bail!("SCRAM needs at least {} iterations", clacks_core::sasl::DEFAULT_ITERATIONS);
                }
                println!("{}", clacks_core::sasl::ScramVerifier::new(password, iterations));
            } else {
                println!("{}", clacks_agent::auth::hash_password(password).map_err(anyhow::Error::msg)?);
            }
            return Ok(());
        }
        Some(Command::MakeCert { out, names, days }) => {
            let (cert, key) = clacks_agent::http::self_signed_certificate(&names, days).map_err(anyhow::Error::msg)?;
            let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
            std::fs::write(&cert_path, cert).with_context(|| format!("cannot write {}", cert_path.display()))?;
            write_private(&key_path, &key)?;
            println!(
                "wrote {} and {} (self-signed, for {}); in agent.toml:\n[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                cert_path.display(),
                key_path.display(),
                names.join(", "),
                cert_path.display(),
                key_path.display()
            );
            return Ok(());
        }
        Some(Command::BrokerPermissions { user, role, vhost }) => {
            let config = effective_config(&cli)?;
            let domain = Domain::new(&config.domain)?;
            let vhost = vhost
                .or_else(|| config.amqp.broker_url().as_deref().map(clacks_core::bus::amqp::vhost_of))
                .unwrap_or_else(|| "/".to_owned());
            let permissions = clacks_core::bus::permissions::BrokerPermissions::for_role(&domain, &role);
            print!("{}", permissions.rabbitmqctl_script(&vhost, &user));
            return Ok(());
        }
        Some(Command::ShowConfig) => {
            let config = effective_config(&cli)?;
            print!("{}", config.to_redacted_toml());
            return Ok(());
        }
        None => {}
    }
    if cli.role == Role::Client {
        return run_client(cli.config.as_deref()).await;
    }
    let config = effective_config(&cli)?;
    let domain = Domain::new(&config.domain)?;
    let node = config.node.clone().unwrap_or_else(clacks_core::domain::default_node_id);
    let mut options = AgentOptions::new(domain.clone(), node.clone());
    if let Some(base) = config.effective_base() {
        options.base = base;
    }
    options.rpc_timeout = secs(config.rpc.timeout_secs);
    options.max_request_bytes = config.rpc.max_request_bytes;
    options.prefetch = config.amqp.prefetch;
    options.heartbeat = secs(config.presence.heartbeat_secs);
    options.node_timeout = secs(config.presence.node_timeout_secs);
    options.plugins_dir = config.plugins.dir.clone();
    options.enable = config.plugins.enable.clone();
    options.schema_dirs = config.schemas.dirs.clone();
    options.trusted_forwarders = config.amqp.trusted_forwarders.clone();
    options.objects = config.objects.options();
    options.acl = config.acl.enabled.then(|| clacks_agent::daemon::AclOptions { admins: config.acl.admins.clone() });
    options.clients.timeout = secs(config.clients.timeout_secs);
    options.clients.agent_users = config.clients.agent_users.clone();
    if let Some(api) = &config.clients.broker_api {
        let vhost =
            config.amqp.broker_url().as_deref().map(clacks_core::bus::amqp::vhost_of).unwrap_or_else(|| "/".to_owned());
        let user = config.clients.broker_api_user.clone().unwrap_or_default();
        let password = config.clients.broker_api_password.clone().unwrap_or_default();
        options.clients.broker_admin = Some(
            clacks_agent::broker_admin::BrokerAdmin::new(api, &user, &password, &vhost).map_err(anyhow::Error::msg)?,
        );
    }
    if !config.acl.enabled {
        tracing::warn!("ACL checks are off ([acl] enabled = false): every authenticated user may call everything");
    }
    if let Some(objects) = &options.objects
        && objects.store.sql_url.is_none()
    {
        let dir = config.objects.data_dir.clone().unwrap_or_else(clacks_agent::config::default_data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    }

    let ca_pem = match &config.amqp.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("cannot read amqp.ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let client_identity = match (&config.amqp.client_cert, &config.amqp.client_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read amqp.client_cert {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("cannot read amqp.client_key {}", key.display()))?,
        )),
        _ => None,
    };
    // The HTTP address and its certificate are taken before anything is announced: a
    // port in use or an unreadable key stops the agent before it says it started.
    let http_listener = match &config.http.listen {
        Some(listen) => {
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let tls = match (&config.http.tls_cert, &config.http.tls_key) {
                (Some(cert), Some(key)) => Some(clacks_agent::http::tls_config(cert, key).await?),
                _ => None,
            };
            Some((listener, tls))
        }
        None => None,
    };
    let bus = match &config.amqp.broker_url() {
        Some(url) => {
            let settings = AmqpSettings {
                connection_name: format!("clacks-agent {node}"),
                heartbeat_secs: config.amqp.heartbeat,
                wait_for_broker: true,
                ca_pem: ca_pem.clone(),
                client_identity,
                // Replies from the agents this one forwards to.
                agent_users: config.amqp.trusted_forwarders.clone(),
                queue_type: config.amqp.queue_type(),
                ..AmqpSettings::default()
            };
            info!(url = %clacks_core::bus::amqp::redact_url(url), "connecting to the broker");
            Bus::Amqp(AmqpBus::connect(url, domain.clone(), settings).await?)
        }
        None if config.http.listen.is_some() => Bus::Local(LocalBus::new("clacks-agent")),
        None => bail!("nothing to serve: give a broker (--amqp URL) and/or an HTTP address (--http HOST:PORT)"),
    };
    let agent = Agent::start(options, bus, Vec::new()).await?;

    let http_stop = tokio_util::sync::CancellationToken::new();
    let mut http_task = None;
    if let Some((listener, tls)) = http_listener {
        let authenticator = match (config.http.auth.as_deref(), &config.amqp.broker_url()) {
            (Some("users"), _) | (None, None) => Authenticator::Users(config.http.users.clone()),
            (Some("directory"), _) => match agent.objects() {
                Some(store) => Authenticator::Directory(store.clone()),
                None => bail!("http.auth = \"directory\" needs the object store ([objects])"),
            },
            (_, Some(url)) => Authenticator::Broker { url: url.clone(), ca_pem: ca_pem.clone() },
            (Some(_), None) => bail!("http.auth = \"broker\" needs a broker URL"),
        };
        let state = clacks_agent::http::HttpState::configured(
            agent.dispatcher().clone(),
            Some((agent.bus().clone(), agent.events().validator().clone())),
            authenticator,
            secs(config.http.session_idle_secs as f64),
            config.http.limits(),
        );
        let stop = http_stop.clone();
        match tls {
            Some(tls) => {
                info!(address = %listener.local_addr()?, "serving JSON-RPC over HTTPS on /rpc");
                let listener = listener.into_std()?;
                http_task = Some(tokio::spawn(async move {
                    clacks_agent::http::serve_tls(listener, state, tls, async move { stop.cancelled().await }).await
                }));
            }
            None => {
                info!(address = %listener.local_addr()?, "serving JSON-RPC on /rpc");
                http_task = Some(tokio::spawn(async move {
                    clacks_agent::http::serve(listener, state, async move { stop.cancelled().await }).await
                }));
            }
        }
    }

    wait_for_stop(&agent).await;
    http_stop.cancel();
    agent.stop().await;
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    Ok(())
}

/// Runs this machine as a joined client until SIGTERM or Ctrl-C.
async fn run_client(config: Option<&std::path::Path>) -> Result<()> {
    let path = config.unwrap_or(std::path::Path::new(clacks_client::config::DEFAULT_CLIENT_CONFIG));
    let config = clacks_client::ClientConfig::load(path)
        .with_context(|| "this machine has not joined a domain (run `clacks join` as root first)".to_owned())?;
    let options = clacks_client::options_from(&config).map_err(anyhow::Error::msg)?;
    info!(id = %config.id, domain = %config.domain, "connecting as a joined client");
    let bus = clacks_client::connect(&config, true).await.map_err(anyhow::Error::msg)?;
    // After `clacks leave` (or `leaveClient`) the broker login is gone: the daemon stops
    // by itself instead of knocking forever.
    let (mut refused, url, user) = match &bus {
        clacks_core::bus::Bus::Amqp(amqp) => {
            (Some(amqp.login_refused()), amqp.display_url().to_owned(), amqp.user().to_owned())
        }
        clacks_core::bus::Bus::Local(_) => (None, String::new(), String::new()),
    };
    let client = clacks_client::ClientDaemon::start(options, bus, Vec::new()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let login_refused = async {
        match refused.as_mut() {
            Some(refused) => {
                if refused.wait_for(|r| *r).await.is_err() {
                    // The bus is gone without a refusal: nothing to wait for.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        () = login_refused => {
            error!("the broker refuses this machine's login: it has left the domain or its secret changed; stopping");
            return Err(clacks_core::bus::BusError::AccessRefused { url, user }.into());
        }
    }
    client.stop().await;
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

async fn wait_for_stop(agent: &Agent) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot watch SIGTERM: {e}");
            agent.shutdown_requested().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = agent.shutdown_requested() => info!("shutdown command received"),
    }
}

/// `3` when the broker refused the agent's login (as the shell exits for a refused
/// connection: a wrong password is not fixed by trying again), else `1`.
fn exit_code_of(e: &anyhow::Error) -> ExitCode {
    let refused = e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<clacks_core::bus::BusError>(),
            Some(clacks_core::bus::BusError::AccessRefused { .. })
        )
    });
    if refused { ExitCode::from(3) } else { ExitCode::FAILURE }
}
