//! `dash-aggregator`: tracing, config, run, wait for a signal, drain.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dash_aggregator::auth::pki::CaDir;
use dash_aggregator::cli::{admin, fleet, users};

#[derive(Parser)]
#[command(
    name = "dash-aggregator",
    version,
    about = "Dash cloud aggregator: MQTT in, PostgreSQL exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: dash_runtime::logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker link, ingest and HTTP endpoints until SIGTERM or Ctrl-C.
    Serve {
        /// TOML config file; DASH_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the default configuration as TOML.
    PrintDefaultConfig,
    /// Check a config file and exit.
    CheckConfig { file: PathBuf },
    /// The certificate authority for agents' client certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// The registry of agents allowed to connect (in PostgreSQL).
    Agent {
        /// Aggregator config file (for database_url or data_dir).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The CA directory (`ca init`); default: data_dir/ca.
        #[arg(long, global = true)]
        ca_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The tree of places (corporate, regions, districts, locations).
    Place {
        /// Aggregator config file (for database_url or data_dir).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: PlaceCommand,
    },
    /// Customers: who owns devices (a franchisee, an end customer, a patient).
    Customer {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CustomerCommand,
    },
    /// Devices: where they are, whose they are, whether they report.
    Device {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// People who log in (works on a fresh install: make the first admin here).
    User {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Give a user a role in a tenant, a place's subtree, or a customer.
    Grant {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        login: String,
        #[arg(long)]
        tenant: String,
        /// admin, editor or viewer.
        #[arg(long)]
        role: String,
        /// Only this place and everything below it.
        #[arg(long)]
        place: Option<String>,
        /// Only this customer's devices.
        #[arg(long)]
        customer: Option<String>,
    },
    /// The audit log: check its hash chain, or export a tenant's rows as CSV.
    Audit {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// API tokens: a role in a scope, for programs.
    Token {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Share links: one dashboard, read-only, over a scope, expiring.
    Share {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ShareCommand,
    },
}

#[derive(Subcommand)]
enum ShareCommand {
    /// Make a link; its token is printed once and stored only as its SHA-256.
    Add {
        #[arg(long)]
        tenant: String,
        /// The dashboard it opens.
        #[arg(long)]
        dashboard: String,
        /// Show only this place and below.
        #[arg(long)]
        place: Option<String>,
        /// Show only this customer's devices.
        #[arg(long)]
        customer: Option<String>,
        /// Days until it stops working (1 to 365).
        #[arg(long, default_value_t = dash_aggregator::api::shares::DEFAULT_DAYS)]
        days: u32,
        /// Who it is for, for the list.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Stop a link from working, at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: i64,
    },
    /// Show a tenant's links (never their tokens).
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user.
    Add {
        #[arg(long)]
        login: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Read the password (12 characters or more) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// An operator: admin of every tenant.
        #[arg(long)]
        operator: bool,
    },
    /// Set a user's password from the first line of standard input (lifts a lockout).
    Passwd {
        #[arg(long)]
        login: String,
    },
    /// Disable a user and end their sessions.
    Disable {
        #[arg(long)]
        login: String,
    },
    /// Show users and their bindings.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole chain; exits non-zero at the first row that breaks it.
    /// Prints the head (SEQ:HASH) to keep outside the database.
    Verify {
        /// A head printed earlier: that row must still be there with that
        /// hash, so a chain rebuilt after an edit is caught.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Print a tenant's rows in [--from, --to) as CSV (default: the last 24 hours).
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once and stored only as its SHA-256.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// admin, editor or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long)]
        place: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// When it stops working (RFC 3339); default: never.
        #[arg(long)]
        expires: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Stop a token from working.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
    /// Show a tenant's tokens (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum PlaceCommand {
    /// Add a place, at the root or under --parent.
    Add {
        #[arg(long)]
        tenant: String,
        /// Its id: letters, digits, '.', '_', '-'.
        #[arg(long)]
        id: String,
        #[arg(long)]
        parent: Option<String>,
        /// What people read; default: the id.
        #[arg(long)]
        name: Option<String>,
        /// Its level: corporate, region, district, location, ...
        #[arg(long, default_value = "")]
        kind: String,
    },
    /// Show a tenant's places as a tree.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Add a customer, or change its name and contacts.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Set devices' place, customer, position, model, firmware, interval and
    /// labels from a CSV file (see the README for its columns).
    Import {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
    },
    /// Show devices with their state, agent, place, customer and last reading.
    List {
        #[arg(long)]
        tenant: String,
        /// online, offline, delayed, unknown or never_reported.
        #[arg(long)]
        state: Option<String>,
        /// A place: its devices and those of every place below it.
        #[arg(long)]
        within: Option<String>,
        #[arg(long)]
        customer: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA, the broker's server certificate and the aggregator's
    /// client certificate; prints the settings that use them.
    Init {
        /// Aggregator config file (for data_dir).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where to write them; default: data_dir/ca.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// A host name or IP address agents connect to (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Rewrite crl.pem from the registry's revoked agents (it is valid for 30 days).
    Crl {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Record an agent and write its certificate, key (and token) and a
    /// ready agent config snippet.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// The aggregator's broker as the agent reaches it, e.g. mqtts://broker.example.net:8883.
        #[arg(long)]
        uplink: String,
        /// Also issue a token (username tenant/name), for brokers that cannot check certificates.
        #[arg(long)]
        token: bool,
        /// Issue no certificate (then --token is needed).
        #[arg(long)]
        no_certificate: bool,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
        /// Or: when it expires (RFC 3339).
        #[arg(long, conflicts_with = "days")]
        expires: Option<chrono::DateTime<chrono::Utc>>,
        /// Where to write the files; default: ./TENANT-NAME.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the files will be on the gateway (paths in the snippet).
        #[arg(long, default_value = "/etc/dash")]
        install_dir: PathBuf,
    },
    /// Stop an agent from connecting and its batches from being stored.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
    /// Show agents with their credentials, revocation and last seen.
    List,
}

fn ca_dir(config: &dash_aggregator::Config, given: Option<PathBuf>) -> CaDir {
    CaDir::new(given.unwrap_or_else(|| config.data_dir.join("ca")))
}

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new()
        .context("starting the tokio runtime")?
        .block_on(work)
}

fn init_tracing(format: dash_runtime::logging::LogFormat) {
    dash_runtime::logging::init(format, "info,rumqttd=warn,sqlx=warn");
}

fn main() -> anyhow::Result<()> {
    dash_runtime::panics::install(None);
    let cli = Cli::parse();
    match cli.command {
        // The service: tracing, config, run until SIGTERM, drain.
        Command::Serve { config } => {
            init_tracing(cli.log.log_format);
            let config = dash_aggregator::Config::load(config.as_deref())?;
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(dash_aggregator::run(config, shutdown_signal()))
        }
        Command::PrintDefaultConfig => {
            print!("{}", dash_aggregator::config::default_toml());
            Ok(())
        }
        Command::CheckConfig { file } => {
            dash_aggregator::Config::load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Ca { command } => {
            init_tracing(cli.log.log_format);
            match command {
                CaCommand::Init {
                    config,
                    ca_dir: dir,
                    hosts,
                } => {
                    let config = dash_aggregator::Config::load(config.as_deref())?;
                    print!("{}", admin::ca_init(&ca_dir(&config, dir), &hosts)?);
                }
                CaCommand::Crl {
                    config,
                    ca_dir: dir,
                } => {
                    let config = dash_aggregator::Config::load(config.as_deref())?;
                    let ca = ca_dir(&config, dir);
                    let path = block_on(admin::with_registry(&config, async |r| {
                        dash_aggregator::auth::pki::write_crl(&ca, &r.revoked_serials().await?)
                    }))?;
                    println!("{} written", path.display());
                }
            }
            Ok(())
        }
        Command::Agent {
            config,
            ca_dir: dir,
            command,
        } => {
            init_tracing(cli.log.log_format);
            let config = dash_aggregator::Config::load(config.as_deref())?;
            let ca = ca_dir(&config, dir);
            let text = block_on(admin::with_registry(
                &config,
                async |registry| match command {
                    AgentCommand::Add {
                        tenant,
                        name,
                        uplink,
                        token,
                        no_certificate,
                        days,
                        expires,
                        out,
                        install_dir,
                    } => {
                        let add = admin::AddAgent {
                            out: out.unwrap_or_else(|| PathBuf::from(format!("{tenant}-{name}"))),
                            tenant,
                            name,
                            uplink,
                            certificate: !no_certificate,
                            token,
                            not_after: expires.unwrap_or_else(|| {
                                chrono::Utc::now() + chrono::Duration::days(days)
                            }),
                            install_dir,
                        };
                        admin::agent_add(registry, &ca, &add).await
                    }
                    AgentCommand::Revoke { tenant, name } => {
                        let ca = ca.ca_key().exists().then_some(&ca);
                        admin::agent_revoke(registry, ca, &tenant, &name).await
                    }
                    AgentCommand::List => admin::agent_list(registry).await,
                },
            ))?;
            println!("{text}");
            Ok(())
        }
        Command::Place { config, command } => {
            fleet_command(cli.log.log_format, config, async |pool| match command {
                PlaceCommand::Add {
                    tenant,
                    id,
                    parent,
                    name,
                    kind,
                } => {
                    fleet::place_add(
                        pool,
                        &tenant,
                        &id,
                        parent.as_deref(),
                        name.as_deref(),
                        &kind,
                    )
                    .await
                }
                PlaceCommand::List { tenant } => fleet::place_list(pool, &tenant).await,
            })
        }
        Command::Customer { config, command } => {
            fleet_command(cli.log.log_format, config, async |pool| match command {
                CustomerCommand::Add {
                    tenant,
                    id,
                    name,
                    email,
                    phone,
                } => {
                    let c = dash_aggregator::storage::fleet::Customer {
                        customer: id,
                        name,
                        email,
                        phone,
                    };
                    fleet::customer_add(pool, &tenant, &c).await
                }
            })
        }
        command @ (Command::User { .. }
        | Command::Grant { .. }
        | Command::Token { .. }
        | Command::Share { .. }) => access_command(cli.log.log_format, command),
        Command::Audit { config, command } => {
            let key = dash_aggregator::Config::load(config.as_deref())?
                .audit
                .key()?;
            fleet_command(cli.log.log_format, config, async |pool| match command {
                AuditCommand::Verify { expect } => {
                    let expect = expect
                        .as_deref()
                        .map(|e| {
                            e.split_once(':')
                                .and_then(|(s, h)| Some((s.parse::<i64>().ok()?, h)))
                                .ok_or_else(|| {
                                    anyhow::anyhow!(
                                        "--expect {e:?}: SEQ:HASH, as `audit verify` printed it"
                                    )
                                })
                        })
                        .transpose()?;
                    let v =
                        dash_aggregator::storage::audit::verify(pool, key.as_ref(), expect).await?;
                    match v.broken {
                        None => Ok(format!(
                            "audit log intact: {} rows{}{}{}",
                            v.rows,
                            v.first
                                .zip(v.last)
                                .map(|(a, b)| format!(", {a} to {b}"))
                                .unwrap_or_default(),
                            match (v.keyed, &key) {
                                (0, _) => String::new(),
                                (n, Some(k)) => format!(", {n} chained with key {}", k.id),
                                (n, None) => format!(", {n} keyed"),
                            },
                            v.last
                                .zip(v.head.as_ref())
                                .map(|(seq, h)| format!("\nhead {seq}:{h} (keep it elsewhere; check later with --expect {seq}:{h})"))
                                .unwrap_or_default()
                        )),
                        Some((seq, why)) => anyhow::bail!("audit log broken at row {seq}: {why}"),
                    }
                }
                AuditCommand::Export { tenant, from, to } => {
                    let now = chrono::Utc::now();
                    let rows = dash_aggregator::storage::audit::list(
                        pool,
                        &tenant,
                        from.unwrap_or(now - chrono::Duration::days(1)),
                        to.unwrap_or(now),
                        i64::MAX,
                    )
                    .await?;
                    Ok(dash_aggregator::audit::to_csv(&rows).trim_end().to_owned())
                }
            })
        }
        Command::Device { config, command } => {
            fleet_command(cli.log.log_format, config, async |pool| match command {
                DeviceCommand::Import { tenant, file } => {
                    fleet::device_import(pool, &tenant, &file).await
                }
                DeviceCommand::List {
                    tenant,
                    state,
                    within,
                    customer,
                } => {
                    let filter = dash_aggregator::storage::fleet::DeviceFilter {
                        state,
                        within,
                        customer,
                        ..Default::default()
                    };
                    fleet::device_list(pool, &tenant, &filter).await
                }
            })
        }
    }
}

/// `user`, `grant`, `token` and `share`.
fn access_command(
    format: dash_runtime::logging::LogFormat,
    command: Command,
) -> anyhow::Result<()> {
    match command {
        Command::User { config, command } => {
            let password = match &command {
                UserCommand::Add {
                    password_stdin: true,
                    ..
                }
                | UserCommand::Passwd { .. } => Some(users::password_from_stdin()?),
                _ => None,
            };
            fleet_command(format, config, async |pool| match command {
                UserCommand::Add {
                    login,
                    name,
                    email,
                    operator,
                    ..
                } => {
                    users::user_add(pool, &login, &name, email.as_deref(), password, operator).await
                }
                UserCommand::Passwd { login } => {
                    users::user_passwd(pool, &login, password.unwrap_or_default()).await
                }
                UserCommand::Disable { login } => users::user_disable(pool, &login).await,
                UserCommand::List => users::user_list(pool).await,
            })
        }
        Command::Grant {
            config,
            login,
            tenant,
            role,
            place,
            customer,
        } => {
            let g = users::grant(&role, place, customer)?;
            fleet_command(format, config, async |pool| {
                users::grant_add(pool, &login, &tenant, &g).await
            })
        }
        Command::Token { config, command } => {
            fleet_command(format, config, async |pool| match command {
                TokenCommand::Add {
                    tenant,
                    name,
                    role,
                    place,
                    customer,
                    expires,
                } => {
                    let g = users::grant(&role, place, customer)?;
                    let token =
                        users::token_add(pool, &tenant, &name, &g, "command line", expires).await?;
                    Ok(format!(
                        "token {name} of {tenant} ({role}): {token}\n(shown once; use it as Authorization: Bearer <token>)"
                    ))
                }
                TokenCommand::Revoke { tenant, name } => {
                    users::token_revoke(pool, &tenant, &name).await
                }
                TokenCommand::List { tenant } => users::token_list(pool, &tenant).await,
            })
        }
        Command::Share { config, command } => {
            fleet_command(format, config, async |pool| match command {
                ShareCommand::Add {
                    tenant,
                    dashboard,
                    place,
                    customer,
                    days,
                    label,
                } => {
                    let g = users::grant("viewer", place, customer)?;
                    users::share_add(pool, &tenant, &dashboard, &label, &g.within, days).await
                }
                ShareCommand::Revoke { tenant, id } => users::share_revoke(pool, &tenant, id).await,
                ShareCommand::List { tenant } => users::share_list(pool, &tenant).await,
            })
        }
        _ => unreachable!("only user, grant, token and share come here"),
    }
}

/// Runs a command on the configured database and prints what it says.
fn fleet_command(
    format: dash_runtime::logging::LogFormat,
    config: Option<PathBuf>,
    work: impl AsyncFnOnce(&sqlx::PgPool) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    init_tracing(format);
    let config = dash_aggregator::Config::load(config.as_deref())?;
    let text = block_on(admin::with_database(&config, work))?;
    println!("{text}");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
