//! A property test of the access model: random place trees, customers,
//! devices and bindings; the devices, series and events each user reads
//! through the API equal a reference computed here from the same data.
//!
//! `DASH_TEST_SEED=N` replays a run.

use std::collections::BTreeSet;

use dash_aggregator::auth::access::{Grant, Role, Within};
use dash_aggregator::ingest::Delivery;
use dash_aggregator::storage::access as rows;
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::app::TestApp;
use dash_tests::pg::TestPostgres;
use dash_tests::{Rng, http};

const CASES: u64 = 20;
const PASSWORD: &str = "a long enough password";

struct World {
    /// `parent[i]`: the index of place i's parent (`None` for a root).
    parent: Vec<Option<usize>>,
    customers: usize,
    /// `(place, customer)` of each device.
    devices: Vec<(Option<usize>, Option<usize>)>,
    /// Each user's grants.
    users: Vec<Vec<Within>>,
}

fn place(i: usize) -> String {
    format!("p{i}")
}

fn customer(i: usize) -> String {
    format!("c{i}")
}

fn world(rng: &mut Rng) -> World {
    let n = 1 + rng.below(12) as usize;
    let parent = (0..n)
        .map(|i| (i > 0 && rng.below(5) > 0).then(|| rng.below(i as u64) as usize))
        .collect();
    let customers = rng.below(4) as usize;
    let devices = (0..5 + rng.below(16) as usize)
        .map(|_| {
            let p = (rng.below(5) > 0).then(|| rng.below(n as u64) as usize);
            let c =
                (customers > 0 && rng.below(2) == 0).then(|| rng.below(customers as u64) as usize);
            (p, c)
        })
        .collect();
    let users = (0..3)
        .map(|_| {
            (0..1 + rng.below(3))
                .map(|_| match rng.below(8) {
                    0 => Within::Tenant,
                    1 | 2 if customers > 0 => {
                        Within::Customer(customer(rng.below(customers as u64) as usize))
                    }
                    _ => Within::Place(place(rng.below(n as u64) as usize)),
                })
                .collect()
        })
        .collect();
    World {
        parent,
        customers,
        devices,
        users,
    }
}

/// Whether place `p` is `top` or below it.
fn below(w: &World, mut p: usize, top: usize) -> bool {
    loop {
        if p == top {
            return true;
        }
        match w.parent[p] {
            Some(up) => p = up,
            None => return false,
        }
    }
}

/// The devices a user with `grants` may read, by the model's definition.
fn reference(w: &World, grants: &[Within]) -> BTreeSet<String> {
    (0..w.devices.len())
        .filter(|&d| {
            let (p, c) = w.devices[d];
            grants.iter().any(|g| match g {
                Within::Tenant => true,
                Within::Place(top) => {
                    let top: usize = top[1..].parse().unwrap();
                    p.is_some_and(|p| below(w, p, top))
                }
                Within::Customer(cu) => c.is_some_and(|c| customer(c) == *cu),
            })
        })
        .map(|d| format!("d{d}"))
        .collect()
}

fn path(w: &World, mut p: usize) -> String {
    let mut parts = vec![place(p)];
    while let Some(up) = w.parent[p] {
        parts.push(place(up));
        p = up;
    }
    parts.reverse();
    format!("/{}/", parts.join("/"))
}

async fn build(pg: &TestPostgres, tenant: &str, w: &World, case: u64) {
    for i in 0..w.parent.len() {
        sqlx::query(
            "INSERT INTO places (tenant, place, parent, name, path) VALUES ($1, $2, $3, $2, $4)",
        )
        .bind(tenant)
        .bind(place(i))
        .bind(w.parent[i].map(place))
        .bind(path(w, i))
        .execute(&pg.pool)
        .await
        .unwrap();
    }
    for c in 0..w.customers {
        sqlx::query("INSERT INTO customers (tenant, customer, name) VALUES ($1, $2, $2)")
            .bind(tenant)
            .bind(customer(c))
            .execute(&pg.pool)
            .await
            .unwrap();
    }
    // One series per device, stored by ingest (which registers the devices).
    let series = (0..w.devices.len())
        .map(|d| SeriesBlock {
            key: SeriesKey::new(format!("d{d}"), "temp"),
            timestamps: vec![chrono::Utc::now().timestamp_micros()],
            values: vec![d as f64],
        })
        .collect();
    // And one sale per device.
    let now = chrono::Utc::now().timestamp_micros();
    let events = (0..w.devices.len())
        .map(|d| dash_tests::fixture::sale(&format!("d{d}"), now))
        .collect();
    let p = dash_tests::fixture::payload_with_events(case + 1, series, events);
    let (t, gw) = (TenantId::new(tenant).unwrap(), AgentId::new("gw").unwrap());
    pg.ingestor()
        .handle_group(&[Delivery {
            tenant: &t,
            agent: &gw,
            payload: &p,
        }])
        .await
        .unwrap();
    for (d, (p, c)) in w.devices.iter().enumerate() {
        sqlx::query(
            "UPDATE devices SET place = $3, customer = $4 WHERE tenant = $1 AND device = $2",
        )
        .bind(tenant)
        .bind(format!("d{d}"))
        .bind(p.map(place))
        .bind(c.map(customer))
        .execute(&pg.pool)
        .await
        .unwrap();
    }
}

fn names(v: &serde_json::Value, list: &str, field: &str) -> BTreeSet<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|x| x[field].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_each_user_reads_equals_the_reference_for_random_trees_and_bindings() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |_| {}).await;
    let port = app.http.port();
    let hash = password_hash();
    let mut seeds = Rng::seeded();
    for case in 0..CASES {
        let mut rng = Rng::case(seeds.below(u64::MAX));
        let w = world(&mut rng);
        let tenant = format!("t{case}");
        build(&pg, &tenant, &w, case).await;
        for (u, grants) in w.users.iter().enumerate() {
            let login = format!("u{case}-{u}");
            assert!(
                rows::add_user(&pg.pool, &login, "", None, Some(&hash), false)
                    .await
                    .unwrap()
            );
            for within in grants {
                let g = Grant {
                    role: Role::Viewer,
                    within: within.clone(),
                };
                rows::bind(&pg.pool, &login, &tenant, &g).await.unwrap();
            }
            let body = serde_json::json!({ "login": login, "password": PASSWORD }).to_string();
            let a = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
            assert_eq!(a.status, 200, "{}", a.text);
            let cookie = a
                .header("set-cookie")
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            let get = async |what: &str| {
                let a = http(
                    port,
                    "GET",
                    &format!("/api/v1/tenants/{tenant}/{what}"),
                    &[("Cookie", &cookie)],
                    None,
                )
                .await;
                assert_eq!(a.status, 200, "{what}: {}", a.text);
                a.json
            };
            let want = reference(&w, grants);
            let devices = names(&get("devices").await, "devices", "device");
            let series = names(&get("series").await, "series", "device");
            let events = names(&get("events").await, "events", "source");
            assert_eq!(
                devices, want,
                "case {case}, user {u} with {grants:?}: devices"
            );
            assert_eq!(
                series, want,
                "case {case}, user {u} with {grants:?}: series"
            );
            assert_eq!(
                events, want,
                "case {case}, user {u} with {grants:?}: events"
            );
        }
    }
    app.stop().await.unwrap();
}

/// One argon2id hash for every user of the run (hashing is the slow part).
fn password_hash() -> String {
    dash_aggregator::auth::password::hash(PASSWORD).unwrap()
}
