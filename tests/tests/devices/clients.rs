//! Real clients: paho-mqtt (3.1.1 and 5), mosquitto_pub (-V mqttv311 and
//! mqttv5) and rumqttc's MQTT 5 client, at QoS 0, 1 and 2.

use std::path::Path;

use super::*;

use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// mosquitto_pub: one reading per run.
fn mosquitto_pub(port: u16, version: &str, qos: u8, device: &str, value: u32) {
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-q", &qos.to_string(), "-i", &format!("{device}-{value}")])
        .args([
            "-t",
            &format!("sensors/{device}/v"),
            "-m",
            &value.to_string(),
        ])
        .status()
        .expect("mosquitto_pub (deploy/scripts/install-deps.sh installs mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub -V {version} -q {qos}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_readings_are_stored_once_in_both_versions() {
    let stack = Stack::start().await;
    for version in ["mqttv311", "mqttv5"] {
        for qos in 0..=2u8 {
            let device = format!("mp-{version}-{qos}");
            for v in 0..5 {
                mosquitto_pub(stack.devices, version, qos, &device, v);
            }
            let got = stack.settled(&device, 5).await;
            assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0, 4.0], "{device}");
        }
    }
}

/// The Python with paho-mqtt that install-deps.sh prepares.
fn python() -> Option<std::path::PathBuf> {
    let cache = std::env::var("DASH_CACHE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/var/tmp/dash-cache".into());
    let python = Path::new(&cache).join("python/bin/python3");
    python.exists().then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_readings_are_stored_once_across_reconnects_in_both_versions() {
    let python = python().expect(
        "paho-mqtt's Python is missing: deploy/scripts/install-deps.sh puts it in $DASH_CACHE_DIR/python",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/paho_publish.py");
    let stack = Stack::start().await;
    for version in ["311", "5"] {
        for qos in 0..=2u8 {
            for clean in [true, false] {
                let device = format!("paho-{version}-{qos}-{}", u8::from(clean));
                let out = std::process::Command::new(&python)
                    .arg(&script)
                    .args(["--port", &stack.devices.to_string(), "--version", version])
                    .args([
                        "--qos",
                        &qos.to_string(),
                        "--device",
                        &device,
                        "--count",
                        "30",
                    ])
                    .args(if clean { &["--clean"][..] } else { &[][..] })
                    .output()
                    .unwrap();
                let report = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{device}: {report}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let acked: usize = report
                    .lines()
                    .find_map(|l| l.strip_prefix("acknowledged "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{device}: no count in {report}"));
                assert_eq!(acked, 30, "{device}: every publish completes");
                let want: Vec<f64> = (0..30).map(f64::from).collect();
                assert_eq!(
                    stack.settled(&device, 30).await,
                    want,
                    "{device}: each reading once"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_readings_are_stored_once_at_every_qos() {
    let stack = Stack::start().await;
    for qos in 0..=2u8 {
        let device = format!("rv5-{qos}");
        let mut options = MqttOptions::new(&device, "127.0.0.1", stack.devices);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        let q = rumqttc::v5::mqttbytes::qos(qos).unwrap();
        for v in 0..50u32 {
            client
                .publish(format!("sensors/{device}/v"), q, false, v.to_string())
                .await
                .unwrap();
        }
        let want_acks = if qos == 0 { 0 } else { 50 };
        let mut acks = 0;
        let mut sent = 0;
        tokio::time::timeout(Duration::from_secs(20), async {
            while acks < want_acks || sent < 50 {
                match events.poll().await.unwrap() {
                    Event::Incoming(rumqttc::v5::Incoming::PubAck(a)) => {
                        assert_eq!(a.reason, v5::PubAckReason::Success);
                        acks += 1;
                    }
                    Event::Incoming(rumqttc::v5::Incoming::PubComp(_)) => acks += 1,
                    Event::Outgoing(rumqttc::Outgoing::Publish(_)) => sent += 1,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("QoS {qos}: {acks} of {want_acks} acknowledged"));
        let want: Vec<f64> = (0..50).map(f64::from).collect();
        assert_eq!(stack.settled(&device, 50).await, want, "QoS {qos}");
    }
}
