//! The agent on a gateway: binary size, memory and CPU.
//!
//! - Stripped release binary, x86-64 here and aarch64 from
//!   `deploy/scripts/build-arm.sh` (target <= 10 MB for aarch64), beside
//!   collectd from Debian with the two plugins the comparison needs.
//! - Modbus, side by side with collectd: both poll the same 100 holding
//!   registers of `dash-sim modbus-tcp` every 100 ms (1,000 samples/s) for
//!   20 s; the agent buffers and forwards to an aggregator, collectd
//!   publishes each value to Mosquitto. CPU per 1,000 samples and RSS of
//!   each process, from /proc.
//! - RSS idle, and at 10,000 samples/s from MQTT devices (10 devices, 100
//!   JSON messages of 10 readings a second each), target <= 20 MB.
//!
//! Run: `cargo build --release --bins && cargo bench -p dash-benches --bench footprint`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dash_benches::{Better, Target, cpu_seconds, row, rss};
use dash_tests::pg::TestPostgres;
use dash_tests::process::{self, Mosquitto, Proc, binary};
use dash_tests::{free_port, metric};

const REGISTERS: u16 = 100;
const POLL_MS: u64 = 100;
const RUN: Duration = Duration::from_secs(20);
const MB: f64 = 1e6;

fn stripped_size(path: &Path, dir: &Path) -> Option<f64> {
    let copy = dir.join(format!("stripped-{}", path.file_name()?.to_string_lossy()));
    std::fs::copy(path, &copy).ok()?;
    let ok = Command::new("strip").arg(&copy).status().ok()?.success();
    ok.then(|| std::fs::metadata(&copy).ok().map(|m| m.len() as f64))
        .flatten()
}

/// Shared libraries `files` load, from ldd.
fn libraries(files: &[&Path]) -> std::collections::BTreeSet<PathBuf> {
    let mut libs = std::collections::BTreeSet::new();
    for f in files {
        let Ok(out) = Command::new("ldd").arg(f).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line
                .split("=>")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                && path.starts_with('/')
            {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    libs
}

/// collectd with its modbus and mqtt plugins, plus the shared libraries
/// they load that the agent does not (libmodbus, libmosquitto, OpenSSL...).
fn collectd_size(agent: &Path) -> Option<f64> {
    let files = [
        Path::new("/usr/sbin/collectd"),
        Path::new("/usr/lib/collectd/modbus.so"),
        Path::new("/usr/lib/collectd/mqtt.so"),
    ];
    let own: f64 = files
        .iter()
        .map(|f| std::fs::metadata(f).ok().map(|m| m.len() as f64))
        .sum::<Option<f64>>()?;
    let shared = libraries(&[agent]);
    let extra: f64 = libraries(&files)
        .difference(&shared)
        .filter_map(|l| std::fs::metadata(l).ok().map(|m| m.len() as f64))
        .sum();
    Some(own + extra)
}

fn collectd_config(dir: &Path, modbus: u16, mqtt: u16) -> PathBuf {
    let mut data = String::new();
    let mut collect = String::new();
    for r in 0..REGISTERS {
        let a = 100 + r;
        data.push_str(&format!(
            "  <Data \"r{a}\">\n    RegisterBase {a}\n    RegisterType Uint16\n    RegisterCmd ReadHolding\n    Type gauge\n    Instance \"r{a}\"\n  </Data>\n"
        ));
        collect.push_str(&format!("      Collect \"r{a}\"\n"));
    }
    let conf = format!(
        "BaseDir \"{base}\"\nPIDFile \"{base}/collectd.pid\"\nInterval {interval}\nFQDNLookup false\nHostname \"gw\"\n\
         LoadPlugin modbus\nLoadPlugin mqtt\n\
         <Plugin modbus>\n{data}  <Host \"plc\">\n    Address \"127.0.0.1\"\n    Port \"{modbus}\"\n    Interval {interval}\n    <Slave 1>\n      Instance \"plc\"\n{collect}    </Slave>\n  </Host>\n</Plugin>\n\
         <Plugin mqtt>\n  <Publish \"bench\">\n    Host \"127.0.0.1\"\n    Port {mqtt}\n    ClientId \"collectd\"\n    QoS 1\n    Prefix \"collectd\"\n  </Publish>\n</Plugin>\n",
        base = dir.display(),
        interval = POLL_MS as f64 / 1000.0,
    );
    let path = dir.join("collectd.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Counts messages below `collectd/` on the broker until `stop`.
async fn count_messages(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let mut opts = rumqttc::MqttOptions::new("counter", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    client
        .subscribe("collectd/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _client = client;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)))) =
                tokio::time::timeout(Duration::from_millis(200), events.poll()).await
            {
                n += 1;
            }
        }
        n
    })
}

/// CPU seconds and peak RSS of `pid` over `RUN`, measured from the moment
/// `counter` first reads a value.
async fn watch_process(pid: u32) -> (f64, f64) {
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(RUN).await;
    (cpu_seconds(pid) - cpu0, rss(pid).1)
}

fn agent_config(dir: &Path, name: &str, uplink: u16, body: &str) -> Proc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "tenant = \"bench\"\nagent_id = \"{name}\"\ndata_dir = \"{}\"\n\n[uplink]\nurl = \"mqtt://127.0.0.1:{uplink}\"\n\n{body}",
            dir.join(name).display()
        ),
    )
    .unwrap();
    Proc::new(
        "dash-agent",
        &["run", "--config", config.to_str().unwrap()],
        &[],
        dir.join(format!("{name}.log")),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = "agent footprint";

    // Sizes.
    let x86 = stripped_size(&binary("dash-agent"), d).expect("stripping the x86 binary");
    let arm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/arm/dash-agent-aarch64");
    let collectd_bytes = collectd_size(&binary("dash-agent"));
    match collectd_bytes {
        Some(c) => {
            row(
                group,
                "stripped binary, x86-64",
                x86 / MB,
                "MB",
                Better::Lower,
                "collectd + modbus, mqtt plugins + the libraries they add (Debian)",
                c / MB,
                None,
            );
            match std::fs::metadata(&arm) {
                Ok(m) => row(
                    group,
                    "stripped binary, aarch64",
                    m.len() as f64 / MB,
                    "MB",
                    Better::Lower,
                    "the same collectd set, x86-64",
                    c / MB,
                    Some(Target::AtMost(10.0)),
                ),
                Err(_) => println!(
                    "no {}: run deploy/scripts/build-arm.sh for the aarch64 size",
                    arm.display()
                ),
            }
        }
        None => println!(
            "collectd is not installed (apt-get install collectd-core libmodbus5 libmosquitto1): no size baseline"
        ),
    }

    let pg = TestPostgres::start().await;
    let (broker, http) = (free_port(), free_port());
    let mut aggregator = process::aggregator(d, &pg.url, broker, http, &[]);
    aggregator.start();
    let plc = free_port();
    let mut sim = Proc::new(
        "dash-sim",
        &["modbus-tcp", "--listen", &format!("127.0.0.1:{plc}")],
        &[],
        d.join("sim.log"),
    );
    sim.start();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The agent polling Modbus.
    let mut points = String::new();
    for r in 0..REGISTERS {
        points.push_str(&format!(
            "[[modbus.devices.points]]\nmetric = \"r{}\"\nkind = \"holding\"\naddress = {}\ntype = \"u16\"\n\n",
            100 + r,
            100 + r
        ));
    }
    let mut agent = agent_config(
        d,
        "modbus-gw",
        broker,
        &format!(
            "[devices]\nlisten = \"\"\n\n[[modbus.devices]]\nname = \"plc\"\naddress = \"127.0.0.1:{plc}\"\npoll_interval_ms = {POLL_MS}\nmax_gap = 0\n\n{points}"
        ),
    );
    agent.start();
    let pid = agent.pid().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = metric(http, "dash_ingest_samples_total").await;
    let started = Instant::now();
    let (agent_cpu, agent_rss) = watch_process(pid).await;
    let agent_samples = (metric(http, "dash_ingest_samples_total").await - before).max(1.0);
    println!(
        "agent, Modbus: measured over {:.1} s",
        started.elapsed().as_secs_f64()
    );
    agent.terminate(Duration::from_secs(10));
    let agent_per_k = agent_cpu * 1e3 / (agent_samples / 1e3);
    println!(
        "agent, Modbus: {agent_samples:.0} samples in {:.0} s, {agent_cpu:.2} CPU s, peak RSS {:.1} MB",
        RUN.as_secs_f64(),
        agent_rss / MB
    );

    // collectd doing the same.
    if collectd_bytes.is_some() {
        let mqtt = free_port();
        let _mosquitto = Mosquitto::start(d, mqtt);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let counter = count_messages(mqtt, stop.clone()).await;
        let conf = collectd_config(d, plc, mqtt);
        let log = std::fs::File::create(d.join("collectd.log")).unwrap();
        let mut collectd: Child = Command::new("/usr/sbin/collectd")
            .args(["-f", "-C"])
            .arg(&conf)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting collectd");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (cd_cpu, cd_rss) = watch_process(collectd.id()).await;
        stop.store(true, Ordering::Relaxed);
        let _ = collectd.kill();
        let _ = collectd.wait();
        let messages = counter.await.unwrap();
        let total_secs = RUN.as_secs_f64() + 3.0;
        // The counter ran over the warm-up too: scale to the measured window.
        let cd_samples = messages as f64 * RUN.as_secs_f64() / total_secs;
        println!(
            "collectd, Modbus -> MQTT: {messages} messages in {total_secs:.0} s, {cd_cpu:.2} CPU s over {:.0} s, peak RSS {:.1} MB",
            RUN.as_secs_f64(),
            cd_rss / MB
        );
        if cd_samples > 0.0 {
            let cd_per_k = cd_cpu * 1e3 / (cd_samples / 1e3);
            row(
                group,
                "CPU per 1,000 Modbus samples (100 registers every 100 ms)",
                agent_per_k,
                "ms",
                Better::Lower,
                "collectd modbus -> mqtt, same registers",
                cd_per_k,
                None,
            );
            row(
                group,
                "peak RSS polling Modbus",
                agent_rss / MB,
                "MB",
                Better::Lower,
                "collectd modbus -> mqtt",
                cd_rss / MB,
                Some(Target::AtMost(20.0)),
            );
        } else {
            println!(
                "collectd published nothing; see {}",
                d.join("collectd.log").display()
            );
        }
    }

    // MQTT devices: idle, then 10,000 samples/s.
    let devices = free_port();
    let mut agent = agent_config(
        d,
        "mqtt-gw",
        broker,
        &format!(
            "[devices]\nlisten = \"127.0.0.1:{devices}\"\n\n[[devices.mappings]]\ntopic = \"sensors/{{device}}/{{metric}}\"\nformat = \"json\"\n"
        ),
    );
    agent.start();
    let pid = agent.pid().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss(pid).0;
    let addr = SocketAddr::from(([127, 0, 0, 1], devices));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..10)
        .map(|dev| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut next = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    // Ten messages of ten readings: 100 samples per tick.
                    dash_tests::device::publish_fields(
                        addr,
                        &format!("d{dev}"),
                        "v",
                        next..next + 10,
                        Arc::new(AtomicBool::new(false)),
                        Duration::from_secs(5),
                        10,
                    )
                    .await;
                    next += 10;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = metric(http, "dash_ingest_samples_total").await;
    let (cpu, _) = watch_process(pid).await;
    let loaded = rss(pid).0;
    let samples = metric(http, "dash_ingest_samples_total").await - before;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    agent.terminate(Duration::from_secs(10));
    let rate = samples / RUN.as_secs_f64();
    println!(
        "agent, MQTT at {rate:.0} samples/s: RSS idle {:.1} MB, loaded {:.1} MB, {:.2} CPU s",
        idle / MB,
        loaded / MB,
        cpu
    );
    row(
        group,
        &format!("RSS at {:.0} samples/s from MQTT devices", rate),
        loaded / MB,
        "MB",
        Better::Lower,
        "the same agent idle",
        idle / MB,
        Some(Target::AtMost(20.0)),
    );
    println!(
        "agent, MQTT: {:.2} ms CPU per 1,000 samples (10 per JSON message)",
        cpu * 1e3 / (samples / 1e3)
    );
    aggregator.terminate(Duration::from_secs(10));
    sim.terminate(Duration::from_secs(5));
}
