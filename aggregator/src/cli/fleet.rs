//! `dash-aggregator place|customer|device ...`: the fleet registry from the
//! command line.
//!
//! # The device CSV (`device import FILE.csv`)
//!
//! A header row names the columns; only `device` is required, the others
//! may appear in any order or not at all:
//!
//! ```text
//! device,place,customer,latitude,longitude,model,firmware,expected_interval_secs,labels
//! th-0001,store-17,franchise-4,51.5072,-0.1276,th-10,1.4.2,900,zone=cold;floor=1
//! ```
//!
//! An empty cell leaves that attribute as it is. `labels` is `key=value`
//! pairs separated by `;`. Places and customers must exist (`place add`,
//! `customer add`). The whole file is checked first and stored in one
//! transaction: a file with a bad row changes nothing, and the error names
//! the row and column.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use dash_shared::TenantId;
use sqlx::PgPool;

use crate::storage::fleet::{self, Customer, DeviceFilter, DeviceMeta};

fn tenant(t: &str) -> anyhow::Result<TenantId> {
    TenantId::new(t.to_owned()).context("--tenant")
}

/// Refuses an id that is not 1 to 64 letters, digits, '.', '_' or '-'.
pub fn check_id(what: &str, v: &str) -> anyhow::Result<()> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("{what} {v:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

/// `place add`.
pub async fn place_add(
    pool: &PgPool,
    t: &str,
    place: &str,
    parent: Option<&str>,
    name: Option<&str>,
    kind: &str,
) -> anyhow::Result<String> {
    let t = tenant(t)?;
    check_id("--id", place)?;
    let name = name.unwrap_or(place);
    if !fleet::add_place(pool, t.as_str(), place, parent, name, kind).await? {
        let places = fleet::places(pool, t.as_str()).await?;
        if places.iter().any(|p| p.place == place) {
            bail!("place {place:?} already exists in {t}");
        }
        bail!(
            "no parent place {:?} in {t}: add it first (`dash-aggregator place list --tenant {t}`)",
            parent.unwrap_or_default()
        );
    }
    Ok(format!("place {place} added to {t}"))
}

/// `place list`: the tree, indented.
pub async fn place_list(pool: &PgPool, t: &str) -> anyhow::Result<String> {
    let t = tenant(t)?;
    let places = fleet::places(pool, t.as_str()).await?;
    let mut out = String::new();
    for p in &places {
        let depth = p.path.matches('/').count().saturating_sub(2);
        let _ = writeln!(
            out,
            "{}{} ({}{})",
            "  ".repeat(depth),
            p.place,
            p.name,
            if p.kind.is_empty() {
                String::new()
            } else {
                format!(", {}", p.kind)
            }
        );
    }
    let _ = write!(out, "{} places", places.len());
    Ok(out)
}

/// `customer add`.
pub async fn customer_add(pool: &PgPool, t: &str, c: &Customer) -> anyhow::Result<String> {
    let t = tenant(t)?;
    check_id("--id", &c.customer)?;
    fleet::put_customer(pool, t.as_str(), c).await?;
    Ok(format!("customer {} set in {t}", c.customer))
}

/// One row of a device CSV, read.
fn parse_csv(text: &str) -> anyhow::Result<Vec<(String, DeviceMeta)>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().context("reading the header row")?.clone();
    const KNOWN: [&str; 9] = [
        "device",
        "place",
        "customer",
        "latitude",
        "longitude",
        "model",
        "firmware",
        "expected_interval_secs",
        "labels",
    ];
    for h in &headers {
        if !KNOWN.contains(&h) {
            bail!("unknown column {h:?}; the columns are {}", KNOWN.join(", "));
        }
    }
    if !headers.iter().any(|h| h == "device") {
        bail!("the header row has no device column");
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record = record.with_context(|| format!("line {line}"))?;
        let mut device = String::new();
        let mut m = DeviceMeta::default();
        for (h, v) in headers.iter().zip(record.iter()) {
            if v.is_empty() {
                continue;
            }
            let at = || format!("line {line}, column {h}");
            let number = |v: &str| v.parse::<f64>().with_context(at);
            match h {
                "device" => device = v.to_owned(),
                "place" => m.place = Some(v.to_owned()),
                "customer" => m.customer = Some(v.to_owned()),
                "latitude" => m.latitude = Some(number(v)?),
                "longitude" => m.longitude = Some(number(v)?),
                "model" => m.model = Some(v.to_owned()),
                "firmware" => m.firmware = Some(v.to_owned()),
                "expected_interval_secs" => {
                    m.expected_interval_secs =
                        Some(v.parse::<i32>().ok().filter(|s| *s > 0).with_context(|| {
                            format!("{}: a whole number of seconds, at least 1", at())
                        })?)
                }
                "labels" => {
                    let mut labels = serde_json::Map::new();
                    for pair in v.split(';').filter(|p| !p.trim().is_empty()) {
                        let (k, val) = pair
                            .split_once('=')
                            .with_context(|| format!("{}: {pair:?} is not key=value", at()))?;
                        labels.insert(k.trim().to_owned(), val.trim().into());
                    }
                    m.labels = Some(labels);
                }
                _ => unreachable!("columns checked above"),
            }
        }
        if device.is_empty() {
            bail!("line {line}: the device column is empty");
        }
        if dash_shared::SeriesKey::new(device.clone(), "x")
            .validate()
            .is_err()
        {
            bail!("line {line}: {device:?} is not a valid device name");
        }
        if let Some(lat) = m.latitude.filter(|l| !(-90.0..=90.0).contains(l)) {
            bail!("line {line}: latitude {lat} is outside -90..90");
        }
        if let Some(lon) = m.longitude.filter(|l| !(-180.0..=180.0).contains(l)) {
            bail!("line {line}: longitude {lon} is outside -180..180");
        }
        rows.push((device, m));
    }
    Ok(rows)
}

/// `device import FILE.csv`: sets the metadata of every device in the file.
pub async fn device_import(pool: &PgPool, t: &str, file: &Path) -> anyhow::Result<String> {
    let t = tenant(t)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rows = parse_csv(&text).with_context(|| format!("{}", file.display()))?;
    let places: Vec<String> = fleet::places(pool, t.as_str())
        .await?
        .into_iter()
        .map(|p| p.place)
        .collect();
    let customers: Vec<String> = fleet::customers(pool, t.as_str())
        .await?
        .into_iter()
        .map(|c| c.customer)
        .collect();
    for (i, (device, m)) in rows.iter().enumerate() {
        if let Some(p) = m.place.as_ref().filter(|p| !places.contains(p)) {
            bail!(
                "{}: line {}: device {device}: no place {p:?} in {t} (`place add` it first)",
                file.display(),
                i + 2
            );
        }
        if let Some(c) = m.customer.as_ref().filter(|c| !customers.contains(c)) {
            bail!(
                "{}: line {}: device {device}: no customer {c:?} in {t} (`customer add` it first)",
                file.display(),
                i + 2
            );
        }
    }
    fleet::set_meta(pool, t.as_str(), &rows).await?;
    Ok(format!("{} devices set in {t}", rows.len()))
}

/// `device list`: a table.
pub async fn device_list(pool: &PgPool, t: &str, filter: &DeviceFilter) -> anyhow::Result<String> {
    let t = tenant(t)?;
    let scope = crate::auth::access::Scope::command_line(t.clone());
    let devices = fleet::devices(pool, &scope, filter, 100_000).await?;
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "{:<32} {:<15} {:<16} {:<16} {:<16} {:<21}\n",
        "DEVICE", "STATE", "AGENT", "PLACE", "CUSTOMER", "LAST READING"
    );
    for d in &devices {
        let _ = writeln!(
            out,
            "{:<32} {:<15} {:<16} {:<16} {:<16} {:<21}",
            d.device,
            d.state,
            d.agent.as_deref().unwrap_or("-"),
            d.place.as_deref().unwrap_or("-"),
            d.customer.as_deref().unwrap_or("-"),
            when(d.last_reading),
        );
    }
    let _ = write!(out, "{} devices", devices.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_csv_reads_every_column_in_any_order_and_empty_cells_leave_things_alone() {
        let too_long = "x".repeat(300);
        let rows = parse_csv(&format!(
            "labels,device,latitude,longitude,place,expected_interval_secs\n\
             zone=cold; floor = 1 ,th-1,51.5,-0.12,store-17,900\n\
             ,th-2,,,,\n\
             \"a=1\",\"{too_long}\",,,,\n",
        ));
        let err = rows.unwrap_err();
        assert!(format!("{err:#}").contains("line 4: \"xxx"), "{err:#}");
        let rows = parse_csv(
            "labels,device,latitude,longitude,place,expected_interval_secs\n\
             zone=cold; floor = 1 ,th-1,51.5,-0.12,store-17,900\n\
             ,th-2,,,,\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        let (d, m) = &rows[0];
        assert_eq!(d, "th-1");
        assert_eq!(m.place.as_deref(), Some("store-17"));
        assert_eq!((m.latitude, m.longitude), (Some(51.5), Some(-0.12)));
        assert_eq!(m.expected_interval_secs, Some(900));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["zone"], "cold");
        assert_eq!(labels["floor"], "1");
        assert_eq!(rows[1].1, DeviceMeta::default());
    }

    #[test]
    fn a_bad_device_csv_names_the_line_and_column() {
        for (text, says) in [
            ("device,colour\nth-1,red\n", "unknown column \"colour\""),
            ("place\nstore-1\n", "no device column"),
            ("device,latitude\nth-1,north\n", "line 2, column latitude"),
            ("device,latitude\nth-1,91\n", "latitude 91 is outside"),
            (
                "device,expected_interval_secs\nth-1,0\n",
                "line 2, column expected_interval_secs",
            ),
            ("device,labels\nth-1,zone\n", "\"zone\" is not key=value"),
            (
                "device,place\n,store-1\n",
                "line 2: the device column is empty",
            ),
        ] {
            let err = format!("{:#}", parse_csv(text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
