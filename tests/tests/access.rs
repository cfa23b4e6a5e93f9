//! People, roles, tokens and sessions, and the isolation of every route:
//! the route list comes from the router itself
//! (`dash_aggregator::api::http::routes`), so a new route is checked too.

use std::path::Path;

use dash_aggregator::api::http::{Access, routes};
use dash_aggregator::auth::access::Role;
use dash_aggregator::config::QueryToken;
use dash_aggregator::ingest::Delivery;
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::app::TestApp;
use dash_tests::pg::TestPostgres;
use dash_tests::{Answer, http};

const PASSWORD: &str = "a long enough password";

/// Runs `dash-aggregator ARGS` (with `stdin` on its standard input).
fn cli(dir: &Path, pg: &TestPostgres, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(dash_tests::process::binary("dash-aggregator"))
        .args(args)
        .env("DASH_DATABASE_URL", &pg.url)
        .env("DASH_DATA_DIR", dir.join("aggregator"))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dash-aggregator {args:?}: {said}");
    said
}

/// An aggregator with the bootstrap token `acme-token` for acme.
async fn with_token(pg: &TestPostgres) -> TestApp {
    TestApp::spawn(&pg.url, |c| {
        c.http.tokens = vec![QueryToken {
            tenant: "acme".into(),
            sha256: dash_runtime::secret::sha256_hex("acme-token"),
        }];
    })
    .await
}

/// A logged-in browser: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

/// Requests made through [`call`] and [`login`] in this test process.
static REQUESTS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

async fn audit_rows(pg: &TestPostgres) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

async fn login(port: u16, login: &str, password: &str) -> Result<Session, Answer> {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = serde_json::json!({ "login": login, "password": password }).to_string();
    let a = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    if a.status != 200 {
        return Err(a);
    }
    let set = a.header("set-cookie").expect("a session cookie").to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    Ok(Session {
        cookie,
        csrf: a.json["csrf_token"].as_str().unwrap().to_owned(),
    })
}

/// How a caller authenticates.
#[derive(Clone)]
enum Who {
    Nobody,
    Bearer(String),
    Browser(String, String),
}

impl Who {
    fn of(s: &Session) -> Who {
        Who::Browser(s.cookie.clone(), s.csrf.clone())
    }
}

async fn call(port: u16, who: &Who, method: &str, path: &str, body: Option<&str>) -> Answer {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let auth;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    match who {
        Who::Nobody => {}
        Who::Bearer(t) => {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", &auth));
        }
        Who::Browser(cookie, csrf) => {
            headers.push(("Cookie", cookie));
            headers.push(("X-CSRF-Token", csrf));
        }
    }
    http(port, method, path, &headers, body).await
}

/// The path of `route` with its parameters filled for `device`.
fn path_of(route: &str, device: &str) -> String {
    let p = route
        .replace("{tenant}", "acme")
        .replace("{device}", device)
        .replace("{id}", "999999")
        .replace("{name}", "no-such-token")
        .replace("{login}", "no-such-user")
        .replace("{customer}", "cu-new");
    if p.ends_with("/query") {
        format!("{p}?from=2025-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&step=1d")
    } else {
        p
    }
}

/// A body each write route accepts, for `device`'s caller.
fn body_of(route: &str) -> Option<&'static str> {
    if route.ends_with("/devices/{device}") {
        Some(r#"{"firmware": "2.0.0"}"#)
    } else if route.ends_with("/bindings") {
        Some(r#"{"login": "wes", "role": "viewer", "place": "pl-west"}"#)
    } else if route.ends_with("/tokens") {
        Some(r#"{"name": "made-by-test", "role": "viewer", "place": "pl-west"}"#)
    } else if route.ends_with("/users") {
        Some(
            r#"{"login": "made-by-test", "password": "a long enough password", "role": "viewer", "place": "pl-west"}"#,
        )
    } else if route.ends_with("/places") {
        Some(r#"{"place": "pl-made", "parent": "pl-west"}"#)
    } else if route.ends_with("/customers/{customer}") {
        Some(r#"{"name": "Made by the test"}"#)
    } else if route.ends_with("/shares") {
        Some(r#"{"dashboard": "fleet", "place": "pl-west"}"#)
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_within_the_callers_scope() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.tokens = vec![QueryToken {
            tenant: "other".into(),
            sha256: dash_runtime::secret::sha256_hex("other-tenant-token"),
        }];
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Readings for three devices, then where they are and whose.
    // Ingest as the aggregator does, noting each device's agent.
    let tracker = std::sync::Arc::new(dash_aggregator::fleet::tracker::Tracker::default());
    let ing = pg.ingestor().with_fleet(tracker.clone());
    let (acme, gw) = (TenantId::new("acme").unwrap(), AgentId::new("gw").unwrap());
    let now = chrono::Utc::now().timestamp_micros();
    for (seq, device) in ["w-dev", "e-dev", "c1-dev"].iter().enumerate() {
        let p = dash_tests::fixture::payload_with_events(
            seq as u64 + 1,
            vec![SeriesBlock {
                key: SeriesKey::new(*device, "temp"),
                timestamps: vec![now - 60_000_000],
                values: vec![1.0],
            }],
            vec![dash_tests::fixture::sale(device, now - 30_000_000)],
        );
        let d = [Delivery {
            tenant: &acme,
            agent: &gw,
            payload: &p,
        }];
        ing.handle_group(&d).await.unwrap();
    }
    dash_aggregator::storage::fleet::record_seen(&pg.pool, &tracker.take())
        .await
        .unwrap();
    for args in [
        &["place", "add", "--tenant", "acme", "--id", "pl-corp"][..],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-west", "--parent", "pl-corp",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-east", "--parent", "pl-corp",
        ],
        &[
            "place",
            "add",
            "--tenant",
            "acme",
            "--id",
            "pl-wstore",
            "--parent",
            "pl-west",
        ],
        &[
            "place",
            "add",
            "--tenant",
            "acme",
            "--id",
            "pl-estore",
            "--parent",
            "pl-east",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-one", "--name", "One",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-two", "--name", "Two",
        ],
    ] {
        cli(d, &pg, args, "");
    }
    let csv = d.join("devices.csv");
    std::fs::write(
        &csv,
        "device,place,customer\nw-dev,pl-wstore,\ne-dev,pl-estore,cu-two\nc1-dev,pl-estore,cu-one\n",
    )
    .unwrap();
    cli(
        d,
        &pg,
        &[
            "device",
            "import",
            "--tenant",
            "acme",
            csv.to_str().unwrap(),
        ],
        "",
    );

    // People: an admin, a region viewer, a customer's user, an editor of
    // the west; a region token.
    for login in ["ana", "wes", "cus", "edd"] {
        cli(
            d,
            &pg,
            &["user", "add", "--login", login, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
    }
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "ana", "--tenant", "acme", "--role", "admin",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "wes", "--tenant", "acme", "--role", "viewer", "--place", "pl-west",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant",
            "--login",
            "cus",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--customer",
            "cu-one",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "edd", "--tenant", "acme", "--role", "editor", "--place", "pl-west",
        ],
        "",
    );
    let said = cli(
        d,
        &pg,
        &[
            "token",
            "add",
            "--tenant",
            "acme",
            "--name",
            "west-feed",
            "--place",
            "pl-west",
        ],
        "",
    );
    let west_token = said
        .split(": ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let said = cli(
        d,
        &pg,
        &[
            "share",
            "add",
            "--tenant",
            "acme",
            "--dashboard",
            "fleet",
            "--place",
            "pl-west",
            "--label",
            "for the west's landlord",
        ],
        "",
    );
    let share_token = said
        .lines()
        .next()
        .and_then(|l| l.rsplit(": ").next())
        .unwrap()
        .trim()
        .to_owned();
    let listed = cli(d, &pg, &["user", "list"], "");
    assert!(
        listed.contains("viewer in acme (place pl-west)"),
        "{listed}"
    );

    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let wes = Who::of(&login(port, "wes", PASSWORD).await.unwrap());
    let cus = Who::of(&login(port, "cus", PASSWORD).await.unwrap());
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let token = Who::Bearer(west_token);
    let other = Who::Bearer("other-tenant-token".into());
    let share = Who::Bearer(share_token);

    // Each scoped caller: the device they may name, and what must never
    // appear in anything they are answered.
    let scoped: Vec<(&str, &Who, &str, Vec<&str>)> = vec![
        (
            "region viewer",
            &wes,
            "w-dev",
            vec![
                "e-dev",
                "c1-dev",
                "pl-estore",
                "pl-east",
                "cu-one",
                "cu-two",
            ],
        ),
        (
            "region token",
            &token,
            "w-dev",
            vec![
                "e-dev",
                "c1-dev",
                "pl-estore",
                "pl-east",
                "cu-one",
                "cu-two",
            ],
        ),
        (
            "customer's user",
            &cus,
            "c1-dev",
            vec!["w-dev", "e-dev", "pl-wstore", "pl-west", "cu-two"],
        ),
    ];
    let all = routes();
    assert!(all.len() >= 28, "the route list: {}", all.len());
    let mut checked = 0;
    for route in &all {
        let method = route.method.as_str();
        let body = body_of(route.path);
        match route.access {
            Access::Public => continue,
            Access::Caller => {
                let path = path_of(route.path, "w-dev");
                for (who, name) in [(&Who::Nobody, "no credentials"), (&share, "a share link")] {
                    let a = call(port, who, method, &path, body).await;
                    assert_eq!(a.status, 401, "{method} {path} with {name}: {}", a.text);
                }
                checked += 1;
                continue;
            }
            Access::Share => {
                // Only a share link's token, and it is told only what it opens.
                for (who, name) in [
                    (&Who::Nobody, "no credentials"),
                    (&ana, "the tenant's admin"),
                    (&token, "an API token"),
                ] {
                    let a = call(port, who, method, route.path, body).await;
                    assert_eq!(
                        a.status, 401,
                        "{method} {} with {name}: {}",
                        route.path, a.text
                    );
                }
                let a = call(port, &share, method, route.path, body).await;
                assert_eq!(
                    (a.status, &a.json["dashboard"], &a.json["scope"]),
                    (
                        200,
                        &serde_json::json!("fleet"),
                        &serde_json::json!("place:pl-west")
                    ),
                    "{}",
                    a.text
                );
                checked += 1;
                continue;
            }
            Access::Tenant(_) => {}
        }
        let path = path_of(route.path, "w-dev");
        for (who, name) in [
            (&Who::Nobody, "no credentials"),
            (&other, "another tenant's token"),
            (&share, "a share link (it opens its dashboard only)"),
        ] {
            let a = call(port, who, method, &path, body).await;
            assert_eq!(a.status, 401, "{method} {path} with {name}: {}", a.text);
        }
        // Another tenant's device path says the same as a device that does
        // not exist: nothing about whether it does.
        for (who_name, who, own, hidden) in &scoped {
            let path = path_of(route.path, own);
            let a = call(port, who, method, &path, body).await;
            let Access::Tenant(needs) = route.access else {
                unreachable!()
            };
            if needs > Role::Viewer {
                assert_eq!(
                    a.status, 403,
                    "{who_name}: {method} {path} is refused: {}",
                    a.text
                );
            } else {
                assert_eq!(a.status, 200, "{who_name}: {method} {path}: {}", a.text);
            }
            for h in hidden {
                assert!(
                    !a.text.contains(h),
                    "{who_name}: {method} {path} shows {h}: {}",
                    a.text
                );
            }
            if route.path.contains("{device}") && method == "GET" {
                let theirs = call(port, who, method, &path_of(route.path, hidden[0]), body).await;
                let nothing = call(
                    port,
                    who,
                    method,
                    &path_of(route.path, "no-such-device"),
                    body,
                )
                .await;
                assert_eq!(
                    (theirs.status, &theirs.json),
                    (404, &nothing.json),
                    "{who_name}: {method} {}",
                    route.path
                );
            }
        }
        // The tenant-wide admin is answered by every route (a 404 for the
        // made-up binding and token ids).
        let a = call(port, &ana, method, &path, body).await;
        assert!(
            matches!(a.status, 200 | 201 | 204 | 404),
            "admin: {method} {path}: {} {}",
            a.status,
            a.text
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        all.iter().filter(|r| r.access != Access::Public).count()
    );

    // The series of a region viewer: its own device's only.
    let a = call(port, &wes, "GET", "/api/v1/tenants/acme/series", None).await;
    let devices: Vec<&str> = a.json["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["w-dev"]);
    let a = call(port, &ana, "GET", "/api/v1/tenants/acme/series", None).await;
    assert_eq!(a.json["series"].as_array().unwrap().len(), 3);
    // And its events and agents: its own device's, and the gateway that
    // serves it.
    let a = call(port, &wes, "GET", "/api/v1/tenants/acme/events", None).await;
    let sources: Vec<&str> = a.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["w-dev"], "{}", a.text);
    let a = call(port, &ana, "GET", "/api/v1/tenants/acme/events", None).await;
    assert_eq!(a.json["events"].as_array().unwrap().len(), 3, "{}", a.text);
    let a = call(port, &cus, "GET", "/api/v1/tenants/acme/agents", None).await;
    assert_eq!(
        (
            &a.json["agents"][0]["agent"],
            &a.json["agents"][0]["devices"]
        ),
        (&serde_json::json!("gw"), &serde_json::json!(1)),
        "{}",
        a.text
    );

    // An editor of the west changes a west device, but cannot move it east
    // or touch an east one.
    let put = |dev: &str| format!("/api/v1/tenants/acme/devices/{dev}");
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"model": "th-10"}"#),
    )
    .await;
    assert_eq!(
        (a.status, &a.json["device"]["model"]),
        (200, &serde_json::json!("th-10")),
        "{}",
        a.text
    );
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"place": "pl-estore"}"#),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text);
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"customer": "cu-two"}"#),
    )
    .await;
    assert_eq!(
        a.status, 403,
        "a place editor hands a device to no customer: {}",
        a.text
    );
    let a = call(port, &edd, "PUT", &put("e-dev"), Some(r#"{"model": "x"}"#)).await;
    assert_eq!(a.status, 404, "{}", a.text);
    // ... nor grant beyond the west, nor anything as an editor.
    let a = call(
        port,
        &edd,
        "POST",
        "/api/v1/tenants/acme/bindings",
        Some(r#"{"login": "cus", "role": "viewer"}"#),
    )
    .await;
    assert_eq!(a.status, 403);

    // Every one of those requests wrote exactly one audit row, and the
    // chain holds.
    let made = REQUESTS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(audit_rows(&pg).await, made, "one row per request");
    let said = cli(d, &pg, &["audit", "verify"], "");
    assert!(
        said.contains(&format!("audit log intact: {made} rows")),
        "{said}"
    );
    // Who, what, in which scope, and how it ended.
    let row: (String, String, String, String, String) = sqlx::query_as(
        "SELECT actor, action, object, scope, outcome FROM audit_log
         WHERE actor_kind = 'user' AND actor = 'edd' AND action = 'update' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "edd".to_owned(),
            "update".to_owned(),
            "/api/v1/tenants/acme/devices/w-dev".to_owned(),
            "place:pl-west".to_owned(),
            "ok".to_owned()
        )
    );
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor_kind = 'anonymous' AND outcome = 'denied' AND status = 401",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert!(denied > 0);
    let export = cli(d, &pg, &["audit", "export", "--tenant", "acme"], "");
    assert!(
        export.starts_with("seq,at,actor_kind") && export.contains(",user,edd,acme,update,"),
        "{export}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_refuses_changes_and_its_chain_shows_an_edited_or_removed_row() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..10 {
        assert_eq!(
            call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
                .await
                .status,
            200
        );
    }
    assert_eq!(audit_rows(&pg).await, 10);
    assert!(cli(d, &pg, &["audit", "verify"], "").contains("intact: 10 rows"));
    // The database refuses to change or remove a row...
    for sql in [
        "UPDATE audit_log SET actor = 'someone else' WHERE seq = 4",
        "DELETE FROM audit_log WHERE seq = 4",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pg.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // ... and whoever gets past that (the owner can drop the trigger) is
    // caught by the chain.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&pg.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone else' WHERE seq = 4")
        .execute(&pg.pool)
        .await
        .unwrap();
    let broken = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(broken.broken.as_ref().map(|b| b.0), Some(4), "{broken:?}");
    assert!(broken.broken.unwrap().1.contains("changed"));
    sqlx::query("UPDATE audit_log SET actor = 'http.tokens' WHERE seq = 4")
        .execute(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        dash_aggregator::storage::audit::verify(&pg.pool, None, None)
            .await
            .unwrap()
            .broken,
        None
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 7")
        .execute(&pg.pool)
        .await
        .unwrap();
    let broken = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(broken.broken.as_ref().map(|b| b.0), Some(8), "{broken:?}");
    assert!(broken.broken.unwrap().1.contains("missing"));
    let out = std::process::Command::new(dash_tests::process::binary("dash-aggregator"))
        .args(["audit", "verify"])
        .env("DASH_DATABASE_URL", &pg.url)
        .env("DASH_DATA_DIR", d.join("aggregator"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify fails on a broken chain");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken at row 8"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_the_oldest_rows_and_the_chain_goes_on_from_there() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..5 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    let cut_at = chrono::Utc::now();
    for _ in 0..3 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    // A replica whose clock is behind writes a row stamped before the cut:
    // the chain's order decides what goes, not the stamps.
    let late = dash_aggregator::storage::audit::Entry {
        at: cut_at - chrono::Duration::hours(1),
        actor_kind: "bootstrap".into(),
        actor: "http.tokens".into(),
        tenant: Some("acme".into()),
        action: "read".into(),
        object: "/api/v1/tenants/acme/places".into(),
        scope: "tenant".into(),
        client: None,
        user_agent: None,
        outcome: "ok".into(),
        status: 200,
    };
    dash_aggregator::storage::audit::append(&pg.pool, &[late], None)
        .await
        .unwrap();
    let gone = dash_aggregator::storage::audit::cut(&pg.pool, cut_at)
        .await
        .unwrap();
    assert_eq!(gone, 5, "only the rows before the first one kept");
    call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    let v = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(
        (v.rows, v.first, v.last, v.broken),
        (5, Some(6), Some(10), None)
    );
    // The tenant is logged as the route decoded it, not as it was spelled.
    let a = call(port, &t, "GET", "/api/v1/tenants/ac%6De/places", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let tenant: Option<String> =
        sqlx::query_scalar("SELECT tenant FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(tenant.as_deref(), Some("acme"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_their_csrf_token_lock_out_guessers_and_end_at_logout() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.login_attempts = 3;
        c.http.lockout_secs = 600;
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli(
        d,
        &pg,
        &["user", "add", "--login", "ana", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "ana", "--tenant", "acme", "--role", "admin",
        ],
        "",
    );

    // The cookie: HttpOnly, SameSite, Secure only behind TLS.
    let body = serde_json::json!({ "login": "ana", "password": PASSWORD }).to_string();
    let plain = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    let cookie = plain.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let proxied = http(
        port,
        "POST",
        "/api/v1/login",
        &[("X-Forwarded-Proto", "https")],
        Some(&body),
    )
    .await;
    assert!(proxied.header("set-cookie").unwrap().contains("; Secure"));
    assert!(!plain.text.contains(PASSWORD));

    let s = login(port, "ana", PASSWORD).await.unwrap();
    let me = call(port, &Who::of(&s), "GET", "/api/v1/session", None).await;
    assert_eq!(
        (me.status, &me.json["login"]),
        (200, &serde_json::json!("ana"))
    );
    assert_eq!(me.json["csrf_token"], s.csrf.as_str());
    // A state-changing request of a session needs its CSRF token.
    let add = r#"{"name": "t1", "role": "viewer"}"#;
    let no_csrf = http(
        port,
        "POST",
        "/api/v1/tenants/acme/tokens",
        &[("Cookie", &s.cookie)],
        Some(add),
    )
    .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text);
    let wrong = http(
        port,
        "POST",
        "/api/v1/tenants/acme/tokens",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", "0123")],
        Some(add),
    )
    .await;
    assert_eq!(wrong.status, 403);
    let made = call(
        port,
        &Who::of(&s),
        "POST",
        "/api/v1/tenants/acme/tokens",
        Some(add),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let token = made.json["token"].as_str().unwrap().to_owned();
    // The token works, is listed without its secret, and stops at revocation.
    let t = Who::Bearer(token.clone());
    assert_eq!(
        call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
            .await
            .status,
        200
    );
    let list = call(
        port,
        &Who::of(&s),
        "GET",
        "/api/v1/tenants/acme/tokens",
        None,
    )
    .await;
    assert!(
        list.text.contains("\"t1\"") && !list.text.contains(&token),
        "{}",
        list.text
    );
    let gone = call(
        port,
        &Who::of(&s),
        "DELETE",
        "/api/v1/tenants/acme/tokens/t1",
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    assert_eq!(
        call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
            .await
            .status,
        401
    );

    // Logout ends the session.
    let out = call(port, &Who::of(&s), "POST", "/api/v1/logout", None).await;
    assert_eq!(out.status, 204);
    assert_eq!(
        call(port, &Who::of(&s), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );

    // Guessing: the same answer for a wrong password and an unknown login,
    // then a lockout that the right password does not lift.
    let unknown = login(port, "nobody", PASSWORD).await.err().unwrap();
    let wrong = login(port, "ana", "not the password at all")
        .await
        .err()
        .unwrap();
    assert_eq!((unknown.status, &unknown.json), (wrong.status, &wrong.json));
    assert_eq!(wrong.status, 401);
    let _ = login(port, "ana", "not the password either").await;
    let locked = login(port, "ana", "still not the password")
        .await
        .err()
        .unwrap();
    assert_eq!(locked.status, 429, "{}", locked.text);
    assert!(locked.header("retry-after").is_some());
    let still = login(port, "ana", PASSWORD).await.err().unwrap();
    assert_eq!(still.status, 429);
    // `user passwd` lifts it.
    cli(
        d,
        &pg,
        &["user", "passwd", "--login", "ana"],
        &format!("{PASSWORD}\n"),
    );
    assert!(login(port, "ana", PASSWORD).await.is_ok());
    // A disabled user cannot log in, and their sessions end.
    let s = login(port, "ana", PASSWORD).await.unwrap();
    cli(d, &pg, &["user", "disable", "--login", "ana"], "");
    assert_eq!(
        call(port, &Who::of(&s), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    assert_eq!(
        login(port, "ana", PASSWORD).await.err().unwrap().status,
        401
    );
    app.stop().await.unwrap();
}

/// acme with the places `pl-corp` → `pl-west`, `pl-east`, a customer
/// `cu-one`, and the users `ana` (admin), `edd` (editor of the west) and
/// `wes` (viewer of the west).
fn people_and_places(d: &Path, pg: &TestPostgres) {
    for args in [
        &["place", "add", "--tenant", "acme", "--id", "pl-corp"][..],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-west", "--parent", "pl-corp",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-east", "--parent", "pl-corp",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-one", "--name", "One",
        ],
    ] {
        cli(d, pg, args, "");
    }
    for (login, role, place) in [
        ("ana", "admin", None),
        ("edd", "editor", Some("pl-west")),
        ("wes", "viewer", Some("pl-west")),
    ] {
        cli(
            d,
            pg,
            &["user", "add", "--login", login, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        let mut args = vec![
            "grant", "--login", login, "--tenant", "acme", "--role", role,
        ];
        if let Some(p) = place {
            args.extend(["--place", p]);
        }
        cli(d, pg, &args, "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_open_one_dashboard_until_revoked_or_expired() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let wes = Who::of(&login(port, "wes", PASSWORD).await.unwrap());
    let shares = "/api/v1/tenants/acme/shares";

    // An editor shares within what they edit, for at most a year.
    let made = call(
        port,
        &edd,
        "POST",
        shares,
        Some(r#"{"dashboard": "sales", "place": "pl-west", "label": "landlord", "days": 7}"#),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let link = Who::Bearer(made.json["token"].as_str().unwrap().to_owned());
    let id = made.json["share"]["id"].as_i64().unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(made.json["share"]["expires_at"].as_str().unwrap())
            .unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((167..=168).contains(&days), "7 days: {days} h");
    for (body, status, why) in [
        (
            r#"{"dashboard": "sales", "place": "pl-east"}"#,
            403,
            "outside the west",
        ),
        (r#"{"dashboard": "sales"}"#, 403, "the whole tenant"),
        (
            r#"{"dashboard": "sales", "place": "pl-west", "days": 400}"#,
            400,
            "longer than a year",
        ),
        (
            r#"{"dashboard": "<b>x</b>", "place": "pl-west"}"#,
            400,
            "a hostile id",
        ),
        (
            r#"{"dashboard": "sales", "place": "pl-nowhere"}"#,
            403,
            "no such place",
        ),
    ] {
        let a = call(port, &edd, "POST", shares, Some(body)).await;
        assert_eq!(a.status, status, "{why}: {}", a.text);
    }
    let a = call(
        port,
        &wes,
        "POST",
        shares,
        Some(r#"{"dashboard": "sales", "place": "pl-west"}"#),
    )
    .await;
    assert_eq!(a.status, 403, "a viewer shares nothing: {}", a.text);
    // The token is shown once: listed without it, to its maker and the admin.
    let token = made.json["token"].as_str().unwrap();
    for who in [&edd, &ana] {
        let a = call(port, who, "GET", shares, None).await;
        assert_eq!(a.json["shares"][0]["id"], id, "{}", a.text);
        assert!(!a.text.contains(token));
    }
    let theirs = call(port, &ana, "POST", shares, Some(r#"{"dashboard": "exec"}"#)).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    let a = call(port, &edd, "GET", shares, None).await;
    assert_eq!(
        a.json["shares"].as_array().unwrap().len(),
        1,
        "only their own: {}",
        a.text
    );
    let other_id = theirs.json["share"]["id"].as_i64().unwrap();
    let a = call(port, &edd, "DELETE", &format!("{shares}/{other_id}"), None).await;
    assert_eq!(a.status, 404, "not theirs to revoke: {}", a.text);

    // The link opens what it was made for, and nothing else.
    let a = call(port, &link, "GET", "/api/v1/share", None).await;
    assert_eq!(
        (
            a.status,
            &a.json["dashboard"],
            &a.json["scope"],
            &a.json["label"]
        ),
        (
            200,
            &serde_json::json!("sales"),
            &serde_json::json!("place:pl-west"),
            &serde_json::json!("landlord")
        ),
        "{}",
        a.text
    );
    let a = call(port, &link, "GET", "/api/v1/tenants/acme/devices", None).await;
    assert_eq!(a.status, 401, "{}", a.text);
    // Each view is in the audit log as the share.
    let views: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor_kind = 'share' AND actor = $1 AND tenant = 'acme'",
    )
    .bind(id.to_string())
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(views, 2);

    // Revoked: refused at once. Expired: refused too.
    let a = call(port, &edd, "DELETE", &format!("{shares}/{id}"), None).await;
    assert_eq!(a.status, 204);
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        401
    );
    let exec = Who::Bearer(theirs.json["token"].as_str().unwrap().to_owned());
    assert_eq!(
        call(port, &exec, "GET", "/api/v1/share", None).await.status,
        200
    );
    sqlx::query("UPDATE share_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(other_id)
        .execute(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        call(port, &exec, "GET", "/api/v1/share", None).await.status,
        401
    );

    // The command line makes, lists and revokes them as well.
    let d = dir.path();
    let said = cli(
        d,
        &pg,
        &[
            "share",
            "add",
            "--tenant",
            "acme",
            "--dashboard",
            "fleet",
            "--customer",
            "cu-one",
        ],
        "",
    );
    assert!(said.contains("customer cu-one"), "{said}");
    let listed = cli(d, &pg, &["share", "list", "--tenant", "acme"], "");
    assert!(
        listed.contains("fleet") && listed.contains("3 share links"),
        "{listed}"
    );
    let new_id = said.split_whitespace().nth(1).unwrap();
    cli(
        d,
        &pg,
        &["share", "revoke", "--tenant", "acme", "--id", new_id],
        "",
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_customers_users_and_sessions_through_the_api() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana_s = login(port, "ana", PASSWORD).await.unwrap();
    let ana = Who::of(&ana_s);
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let places = "/api/v1/tenants/acme/places";

    // Places: under what one edits; a root needs the whole tenant.
    for (who, body, status) in [
        (
            &edd,
            r#"{"place": "st-1", "parent": "pl-west", "kind": "location"}"#,
            201,
        ),
        (&edd, r#"{"place": "st-2", "parent": "pl-east"}"#, 403),
        (&edd, r#"{"place": "st-3"}"#, 403),
        (&edd, r#"{"place": "st-1", "parent": "pl-west"}"#, 409),
        (&edd, r#"{"place": "a b", "parent": "pl-west"}"#, 400),
        (
            &ana,
            r#"{"place": "emea", "name": "EMEA", "kind": "region"}"#,
            201,
        ),
    ] {
        let a = call(port, who, "POST", places, Some(body)).await;
        assert_eq!(a.status, status, "{body}: {}", a.text);
    }
    let a = call(port, &edd, "GET", places, None).await;
    let seen: Vec<&str> = a.json["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["place"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["pl-west", "st-1"], "{}", a.text);

    // Customers: an editor of the whole tenant (or of that customer).
    let put = |c: &str| format!("/api/v1/tenants/acme/customers/{c}");
    let body = r#"{"name": "Franchise 4", "email": "owner@f4.example"}"#;
    assert_eq!(
        call(port, &edd, "PUT", &put("fr-4"), Some(body))
            .await
            .status,
        403
    );
    let a = call(port, &ana, "PUT", &put("fr-4"), Some(body)).await;
    assert_eq!(
        (a.status, &a.json["customer"]["email"]),
        (200, &serde_json::json!("owner@f4.example")),
        "{}",
        a.text
    );
    let bad = call(
        port,
        &ana,
        "PUT",
        &put("fr-4"),
        Some(r#"{"name": "x", "email": "nope"}"#),
    )
    .await;
    assert_eq!(bad.status, 400);

    // Users: an admin adds one with a role; it logs in and sees its scope.
    let users = "/api/v1/tenants/acme/users";
    let new = r#"{"login": "sam", "password": "another long password", "role": "viewer", "place": "pl-east"}"#;
    assert_eq!(call(port, &edd, "POST", users, Some(new)).await.status, 403);
    let a = call(port, &ana, "POST", users, Some(new)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(call(port, &ana, "POST", users, Some(new)).await.status, 409);
    let short = r#"{"login": "sue", "password": "short", "role": "viewer"}"#;
    assert_eq!(
        call(port, &ana, "POST", users, Some(short)).await.status,
        400
    );
    let sam = login(port, "sam", "another long password").await.unwrap();
    let a = call(port, &Who::of(&sam), "GET", places, None).await;
    assert_eq!(a.json["places"][0]["place"], "pl-east", "{}", a.text);

    // Sessions: a user lists theirs and ends one; an admin ends all of a
    // user's.
    let second = login(port, "ana", PASSWORD).await.unwrap();
    let a = call(port, &ana, "GET", "/api/v1/sessions", None).await;
    let list = a.json["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", a.text);
    assert!(!a.text.contains(ana_s.cookie.split('=').nth(1).unwrap()));
    let other = list.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_i64()
        .unwrap();
    let a = call(
        port,
        &ana,
        "DELETE",
        &format!("/api/v1/sessions/{other}"),
        None,
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        call(port, &Who::of(&second), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(port, &ana, "GET", "/api/v1/session", None)
            .await
            .status,
        200
    );
    let a = call(
        port,
        &Who::of(&sam),
        "DELETE",
        &format!("/api/v1/sessions/{other}"),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "not theirs");
    // Not someone another tenant also answers for.
    let d = dir.path();
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "edd", "--tenant", "other", "--role", "viewer",
        ],
        "",
    );
    let a = call(
        port,
        &ana,
        "DELETE",
        "/api/v1/tenants/acme/users/edd/sessions",
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = call(
        port,
        &ana,
        "DELETE",
        "/api/v1/tenants/acme/users/sam/sessions",
        None,
    )
    .await;
    assert_eq!(
        (a.status, &a.json["ended"]),
        (200, &serde_json::json!(1)),
        "{}",
        a.text
    );
    assert_eq!(
        call(port, &Who::of(&sam), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_in_parallel_get_no_more_tries_and_unknown_logins_lock_alike() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.login_attempts = 4;
        c.http.client_login_attempts = 30;
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);

    // 12 wrong passwords at once: 4 are checked, the 4th answered with the
    // lockout it caused, as one after another would be.
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..12 {
        let body = serde_json::json!({ "login": "wes", "password": format!("guess number {i}") })
            .to_string();
        guesses.spawn(async move {
            http(port, "POST", "/api/v1/login", &[], Some(&body))
                .await
                .status
        });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let held = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, held), (3, 9), "{statuses:?}");
    let (failed, locked): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT failed_logins, locked_until FROM users WHERE login = 'wes'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "the count starts again at the lock");
    assert!(locked.is_some_and(|l| l > chrono::Utc::now()));

    // An unknown login is held after as many tries, with the same answer.
    let mut unknown = Vec::new();
    for i in 0..5 {
        let body =
            serde_json::json!({ "login": "nobody", "password": format!("guess {i}") }).to_string();
        unknown.push(http(port, "POST", "/api/v1/login", &[], Some(&body)).await);
    }
    let statuses: Vec<u16> = unknown.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    assert!(unknown[3].header("retry-after").is_some());

    // One address trying many logins is held, even for a right password.
    for i in 0..20 {
        let body = serde_json::json!({ "login": format!("user-{i}"), "password": "x" }).to_string();
        let _ = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    }
    let a = login(port, "ana", PASSWORD).await.err().expect("held");
    assert_eq!(a.status, 429, "{}", a.text);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let a = http(app.http.port(), "GET", "/api/v1/openapi.json", &[], None).await;
    assert_eq!(a.status, 200);
    let doc = &a.json;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, &dash_aggregator::api::http::openapi());
    let mut ids = std::collections::HashSet::new();
    for route in routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert_eq!(op["summary"], route.summary, "{method} {}", route.path);
        assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
        // Every {parameter} of the path is declared, and nothing else.
        let declared: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_path: Vec<&str> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_path, "{}", route.path);
        let public = route.access == Access::Public;
        assert_eq!(op["security"].as_array().unwrap().is_empty(), public);
        assert_eq!(op["responses"]["401"].is_null(), public, "{}", route.path);
    }
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, routes().len(), "nothing more than the routes");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_audit_log_cannot_record_is_not_answered_and_a_change_says_so() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'audit storage is down (test)'; END $$;
         CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log
             FOR EACH ROW EXECUTE FUNCTION test_refuse_audit();",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let read = call(port, &ana, "GET", "/api/v1/tenants/acme/places", None).await;
    assert_eq!(read.status, 503, "{}", read.text);
    assert!(
        !read.text.contains("pl-west"),
        "nothing of the answer: {}",
        read.text
    );
    assert!(!read.text.contains("test)"), "no SQL error: {}", read.text);
    let change = call(
        port,
        &ana,
        "POST",
        "/api/v1/tenants/acme/places",
        Some(r#"{"place": "st-9", "parent": "pl-west"}"#),
    )
    .await;
    assert_eq!(change.status, 201, "the change happened: {}", change.text);
    assert_eq!(change.header("x-dash-audit"), Some("not-recorded"));
    sqlx::raw_sql("DROP TRIGGER test_refuse_audit ON audit_log")
        .execute(&pg.pool)
        .await
        .unwrap();
    let read = call(port, &ana, "GET", "/api/v1/tenants/acme/places", None).await;
    assert_eq!(read.status, 200);
    assert!(read.text.contains("st-9"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_chain_cannot_be_rebuilt_without_its_key_and_a_noted_head_catches_a_rewrite() {
    use dash_aggregator::storage::audit::{self, ChainKey};
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("audit.key");
    std::fs::write(&key_file, "k3y-for-the-test-with-more-than-32-bytes\n").unwrap();
    let app = TestApp::spawn(&pg.url, |c| {
        c.audit.key_file = key_file.clone();
        c.http.tokens = vec![QueryToken {
            tenant: "acme".into(),
            sha256: dash_runtime::secret::sha256_hex("acme-token"),
        }];
    })
    .await;
    let port = app.http.port();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..6 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    let key = ChainKey::new(b"k3y-for-the-test-with-more-than-32-bytes".to_vec()).unwrap();
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    assert_eq!((v.rows, v.keyed, &v.broken), (6, 6, &None));
    let head = v.head.clone().unwrap();
    // The command line, with the config naming the key, says so and
    // prints the head to keep.
    let config = dir.path().join("dash.toml");
    std::fs::write(
        &config,
        format!("[audit]\nkey_file = {:?}\n", key_file.display().to_string()),
    )
    .unwrap();
    let verify = |args: &[&str]| {
        std::process::Command::new(dash_tests::process::binary("dash-aggregator"))
            .args(args)
            .env("DASH_DATABASE_URL", &pg.url)
            .env("DASH_DATA_DIR", dir.path().join("aggregator"))
            .output()
            .unwrap()
    };
    let out = verify(&["audit", "verify", "--config", config.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("6 chained with key {}", key.id)),
        "{said}"
    );
    assert!(said.contains(&format!("head 6:{head}")), "{said}");
    // Without the key, or with another, nothing can be vouched for.
    let out = verify(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("verify with the config that names audit.key_file")
    );
    let other = ChainKey::new(vec![7; 40]).unwrap();
    let v = audit::verify(&pg.pool, Some(&other), None).await.unwrap();
    assert!(v.broken.unwrap().1.contains("not this one"));

    // The database's owner edits row 3 and rebuilds the chain from there
    // as plain SHA-256 (the key is not theirs): caught.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&pg.pool)
        .await
        .unwrap();
    let rows: Vec<audit::Row> = sqlx::query_as(
        "SELECT seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent,
                outcome, status, prev_hash, hash, key_id FROM audit_log ORDER BY seq",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    let mut prev = rows[1].hash.clone();
    for mut row in rows.into_iter().skip(2) {
        if row.seq == 3 {
            row.entry.actor = "someone else".into();
        }
        let hash = audit::chain_hash(row.seq, &row.entry, &prev);
        sqlx::query("UPDATE audit_log SET actor = $2, prev_hash = $3, hash = $4, key_id = NULL WHERE seq = $1")
            .bind(row.seq)
            .bind(&row.entry.actor)
            .bind(&prev)
            .bind(&hash)
            .execute(&pg.pool)
            .await
            .unwrap();
        prev = hash;
    }
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    let (seq, why) = v.broken.unwrap();
    assert_eq!(seq, 3, "{why}");
    assert!(why.contains("unkeyed row after keyed ones"), "{why}");
    // Even rebuilt from the very first row, the noted head catches it.
    sqlx::query("UPDATE audit_log SET key_id = NULL")
        .execute(&pg.pool)
        .await
        .unwrap();
    let mut prev = audit::GENESIS.to_owned();
    let rows: Vec<audit::Row> = sqlx::query_as(
        "SELECT seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent,
                outcome, status, prev_hash, hash, key_id FROM audit_log ORDER BY seq",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    for row in rows {
        let hash = audit::chain_hash(row.seq, &row.entry, &prev);
        sqlx::query("UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1")
            .bind(row.seq)
            .bind(&prev)
            .bind(&hash)
            .execute(&pg.pool)
            .await
            .unwrap();
        prev = hash;
    }
    assert_eq!(
        audit::verify(&pg.pool, None, None).await.unwrap().broken,
        None,
        "it looks whole"
    );
    // ... but not to the key's holder: every row should be keyed.
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    let (seq, why) = v.broken.unwrap();
    assert_eq!(seq, 1, "{why}");
    assert!(why.contains("audit.keyed_from"), "{why}");
    let v = audit::verify(&pg.pool, None, Some((6, &head)))
        .await
        .unwrap();
    assert!(v.broken.unwrap().1.contains("rewritten"));
    let out = verify(&["audit", "verify", "--expect", &format!("6:{head}")]);
    assert!(!out.status.success());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_ends_with_the_user_or_token_that_made_it() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let tokens = "/api/v1/tenants/acme/tokens";
    let devices = "/api/v1/tenants/acme/devices";
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let a = call(
        port,
        &ana,
        "POST",
        tokens,
        Some(&format!(
            r#"{{"name": "provisioner", "role": "admin", "expires_at": "{tomorrow}"}}"#
        )),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let provisioner = Who::Bearer(a.json["token"].as_str().unwrap().to_owned());
    // A token made by a token that expires tomorrow expires tomorrow too,
    // however long it asked for.
    for body in [
        r#"{"name": "feed", "role": "viewer"}"#,
        r#"{"name": "feed-2", "role": "viewer", "expires_at": "2099-01-01T00:00:00Z"}"#,
    ] {
        let made = call(port, &provisioner, "POST", tokens, Some(body)).await;
        assert_eq!(made.status, 201, "{}", made.text);
        let expires =
            chrono::DateTime::parse_from_rfc3339(made.json["expires_at"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            tomorrow,
            "{body}"
        );
    }
    let feed = call(
        port,
        &provisioner,
        "POST",
        tokens,
        Some(r#"{"name": "feed-3", "role": "viewer"}"#),
    )
    .await;
    let feed = Who::Bearer(feed.json["token"].as_str().unwrap().to_owned());
    let grandchild = call(
        port,
        &provisioner,
        "POST",
        tokens,
        Some(r#"{"name": "sub", "role": "admin"}"#),
    )
    .await;
    let sub = Who::Bearer(grandchild.json["token"].as_str().unwrap().to_owned());
    let made = call(
        port,
        &sub,
        "POST",
        tokens,
        Some(r#"{"name": "leaf", "role": "viewer"}"#),
    )
    .await;
    let leaf = Who::Bearer(made.json["token"].as_str().unwrap().to_owned());
    for who in [&feed, &sub, &leaf] {
        assert_eq!(call(port, who, "GET", devices, None).await.status, 200);
    }
    // A share link made by it ends with it too, and never outlives it.
    let shared = call(
        port,
        &provisioner,
        "POST",
        "/api/v1/tenants/acme/shares",
        Some(r#"{"dashboard": "fleet", "days": 300}"#),
    )
    .await;
    assert_eq!(shared.status, 201, "{}", shared.text);
    let until =
        chrono::DateTime::parse_from_rfc3339(shared.json["share"]["expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tomorrow
    );
    let link = Who::Bearer(shared.json["token"].as_str().unwrap().to_owned());
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        200
    );
    // Revoking the maker stops what it made, and what that made.
    let a = call(port, &ana, "DELETE", &format!("{tokens}/provisioner"), None).await;
    assert_eq!(a.status, 204);
    for who in [&provisioner, &feed, &sub, &leaf] {
        assert_eq!(call(port, who, "GET", devices, None).await.status, 401);
    }
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        401
    );
    // A token made by a user stops when the user is disabled.
    let a = call(
        port,
        &ana,
        "POST",
        tokens,
        Some(r#"{"name": "anas", "role": "viewer"}"#),
    )
    .await;
    let anas = Who::Bearer(a.json["token"].as_str().unwrap().to_owned());
    assert_eq!(call(port, &anas, "GET", devices, None).await.status, 200);
    cli(dir.path(), &pg, &["user", "disable", "--login", "ana"], "");
    assert_eq!(call(port, &anas, "GET", devices, None).await.status, 401);
    app.stop().await.unwrap();
}
