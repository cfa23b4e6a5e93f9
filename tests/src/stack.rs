//! The preamble most end-to-end tests share: a throwaway PostgreSQL, an
//! aggregator with its embedded broker, and one agent listening for
//! devices, each on a free port, all started.

use std::net::SocketAddr;

use crate::free_port;
use crate::pg::TestPostgres;
use crate::process::{self, DeviceSource, Proc};

/// Everything a device-to-database test runs against.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub pg: TestPostgres,
    pub aggregator: Proc,
    pub agent: Proc,
    /// The aggregator's MQTT port (the agent's uplink).
    pub broker: u16,
    /// The aggregator's HTTP port (`/metrics`, the query API).
    pub http: u16,
    /// The agent's device listener.
    pub devices: u16,
}

impl Stack {
    /// The stack with agent `agent_id` of `tenant` as [`process::agent`] writes it.
    pub async fn start(tenant: &str, agent_id: &str) -> Stack {
        Stack::start_with(tenant, agent_id, |agent| agent).await
    }

    /// [`Stack::start`], with `agent` changing the agent's process before
    /// it starts (environment overrides, say).
    pub async fn start_with(
        tenant: &str,
        agent_id: &str,
        agent: impl FnOnce(Proc) -> Proc,
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let pg = TestPostgres::start().await;
        let (broker, http, devices) = (free_port(), free_port(), free_port());
        let mut aggregator = process::aggregator(dir.path(), &pg.url, broker, http, &[]);
        aggregator.start();
        let mut agent = agent(process::agent(
            dir.path(),
            tenant,
            agent_id,
            DeviceSource::Listen(devices),
            broker,
        ));
        agent.start();
        Stack {
            dir,
            pg,
            aggregator,
            agent,
            broker,
            http,
            devices,
        }
    }

    /// Where devices connect.
    pub fn device_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.devices))
    }
}
