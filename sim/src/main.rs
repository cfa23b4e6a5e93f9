//! `dash-sim`: a Modbus server with changing registers, or a POS posting
//! sales, for the demo and for trying an agent config.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dash-sim",
    version,
    about = "Simulated devices for Dash: a Modbus server (TCP or RTU) and a POS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Modbus TCP: a seconds counter at holding 0, a temperature (f32) at holding 2-3, fixtures from 1000.
    ModbusTcp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5020")]
        listen: SocketAddr,
    },
    /// Serve Modbus RTU on a serial port (e.g. one end of a socat pty pair).
    ModbusRtu {
        #[arg(long)]
        serial: String,
        #[arg(long, default_value_t = 9600)]
        baud: u32,
    },
    /// MQTT sensors publishing temperature and humidity to an agent's device listener.
    Mqtt {
        /// The broker (the agent's devices.listen).
        #[arg(long, default_value = "127.0.0.1:1884")]
        broker: SocketAddr,
        #[arg(long, default_value_t = 5)]
        devices: usize,
        /// Milliseconds between readings.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
    },
    /// Post sales to an agent's HTTP input, each with an Idempotency-Key.
    Pos {
        /// The agent's HTTP input.
        #[arg(long, default_value = "127.0.0.1:8080")]
        agent: SocketAddr,
        /// Source name in the agent's http.sources.
        #[arg(long, default_value = "pos")]
        source: String,
        /// Bearer token of that source.
        #[arg(long, env = "DASH_SIM_TOKEN")]
        token: String,
        /// Sales per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Stop after this many (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dash_runtime::logging::init(dash_runtime::logging::LogFormat::Text, "info");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match Cli::parse().command {
        Command::ModbusTcp { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, "Modbus TCP simulator listening");
            dash_sim::serve_tcp(listener, stop).await?;
        }
        Command::ModbusRtu { serial, baud } => {
            tracing::info!(%serial, baud, "Modbus RTU simulator serving");
            dash_sim::serve_rtu(&serial, baud, stop).await?;
        }
        Command::Mqtt {
            broker,
            devices,
            every_ms,
        } => {
            tracing::info!(%broker, devices, "MQTT devices publishing");
            tokio::select! {
                r = dash_sim::mqtt_devices(broker, devices, std::time::Duration::from_millis(every_ms)) => r?,
                _ = stop => {}
            }
        }
        Command::Pos {
            agent,
            source,
            token,
            rate,
            count,
        } => {
            let n = dash_sim::pos(agent, &format!("/ingest/{source}"), &token, rate, count).await?;
            tracing::info!(sales = n, "done");
        }
    }
    Ok(())
}
